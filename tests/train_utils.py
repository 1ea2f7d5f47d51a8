"""Small, fast variants of configs/tiny.py for the training tests (same code paths, CPU-seconds per stage)."""

from shine_jax.train.config import load_config, model_config
from tests.conftest import REPO

SMALL = [  # a base trained from scratch in the test's workdir (not the shipped one), small shapes
    "model.source='scratch'", "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
    "model.num_kv_heads=2", "model.head_dim=32", "shine.lora_rank=2", "shine.metalora_rank=4",
    "shine.m2p.num_layers=2", "shine.m2p.num_heads=2", "data.num_people=400", "data.train_docs=200",
    "data.eval_docs=16", "data.tokenizer_vocab=512", "data.context_length=96", "data.conversation_length=112",
    "data.lm_length=128", "batch_size=4", "grad_accum=2", "eval_batches=1", "log_every=5", "eval_every=10",
]


def small_overrides(steps: int = 20, extra=(), data_dir=None) -> list[str]:
    overrides = SMALL + [f"steps={steps}", "checkpoint_every=10", f"optim.warmup_steps={min(5, steps)}"]
    if data_dir is not None:
        overrides.append(f"data.dir='{data_dir}'")
    return overrides + list(extra)


def small_config(stage: str, steps: int = 20, extra=(), data_dir=None):
    return load_config(f"{REPO}/configs/tiny.py:{stage}", small_overrides(steps, extra, data_dir))


def shine_step_setup(cfg, mesh, vocab: int = 96):
    """A random tiny-family base + fresh hypernetwork placed on ``mesh``: (task, state, jitted train step)."""
    import jax

    from shine_jax.base_model import BaseModel
    from shine_jax.train import loop
    from shine_jax.train import optimizer as optim
    from shine_jax.train.step import init_state, make_train_step

    base = BaseModel.random(model_config(cfg, vocab), seed=0)
    base.shard(mesh)
    task = loop.shine_task(cfg, base, mesh, workdir=None)
    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels)
    state = jax.jit(lambda p: init_state(p, tx))(jax.device_put(task.params, task.param_shardings))
    sh = jax.tree.map(lambda x: x.sharding, state)
    step = jax.jit(make_train_step(task.loss_fn, tx), in_shardings=(sh, None, None), out_shardings=(sh, None))
    return task, state, step


def random_shine_batch(cfg, batch: int, vocab: int = 96, seed: int = 0) -> dict:
    """Host batch of random ids with some evidence padding and labels on the second half of each conversation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tc, tq = cfg.data.context_length, cfg.data.conversation_length
    out = {"evidence_ids": rng.integers(1, vocab, (batch, tc)), "evidence_mask": np.ones((batch, tc), np.int32),
           "input_ids": rng.integers(1, vocab, (batch, tq)), "attention_mask": np.ones((batch, tq), np.int32),
           "labels": rng.integers(1, vocab, (batch, tq))}
    out["evidence_mask"][:, :10] = 0
    out["labels"][:, : tq // 2] = -100
    return out
