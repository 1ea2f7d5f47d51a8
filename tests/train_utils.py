"""Small, fast variants of configs/tiny.py for the training tests (same code paths, CPU-seconds per stage)."""

from shine_jax.train.config import load_config
from tests.conftest import REPO

SMALL = [
    "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
    "model.num_kv_heads=2", "model.head_dim=32", "shine.lora_rank=2", "shine.metalora_rank=4",
    "shine.m2p_layers=2", "shine.m2p_heads=2", "data.num_people=400", "data.train_docs=200",
    "data.eval_docs=16", "data.tokenizer_vocab=512", "data.context_length=96", "data.conversation_length=112",
    "data.lm_length=128", "batch_size=4", "grad_accum=2", "eval_batches=1", "log_every=5", "eval_every=10",
]


def small_config(stage: str, steps: int = 20, extra=(), data_dir=None):
    overrides = SMALL + [f"steps={steps}", "checkpoint_every=10", f"optim.warmup_steps={min(5, steps)}"]
    if data_dir is not None:
        overrides.append(f"data.dir='{data_dir}'")
    return load_config(f"{REPO}/configs/tiny.py:{stage}", overrides + list(extra))
