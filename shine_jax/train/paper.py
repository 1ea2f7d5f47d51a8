"""Shared settings of the paper-scale configs ``configs/qwen3_*.py`` (SHINE_SPEC §1, §7): r=8, Meta LoRA 128,
M2P 4 layers (head dim 128, FFN 2H), scale 0.001, method rl, lr 5e-5 / 3e-5 / 1e-5 per stage with linear warmup
then decay, effective batch 32, context / conversation lengths 1150 / 2380, bf16 compute with float32 master weights, a frozen base stored in bf16, remat."""

import os

from shine_jax.train.config import ConfigError, base_config

DATA_ENV = "SHINE_JAX_PAPER_DATA"  # where `shine-jax data import` wrote the paper's data (README walk-through)

STAGE_SETTINGS = {  # steps are per stage; warmup as the official scripts (200-400)
    "pretrain": dict(lr=5e-5, warmup=400, steps=20000),
    "ift_mqa": dict(lr=3e-5, warmup=200, steps=6000),
    "ift_1qa": dict(lr=1e-5, warmup=200, steps=3000),
}


def paper_config(name: str, hf_dir: str, hidden: int, stage: str | None, preset: str = ""):
    c = base_config()
    c.name = name
    c.stage = stage or "pretrain"
    if c.stage not in STAGE_SETTINGS:
        raise ConfigError(f"{name} has stages {', '.join(STAGE_SETTINGS)} (no base_pretrain: the base is pretrained)")
    c.model.source, c.model.hf_dir, c.model.preset = "hf", hf_dir, preset
    c.model.compute_dtype, c.model.remat = "bfloat16", True
    c.model.frozen_param_dtype = "bfloat16"  # the official keeps it in float32; Qwen3-8B then fits one 141 GiB device
    c.shine.lora_rank, c.shine.metalora_rank, c.shine.scale = 8, 128, 1e-3
    c.shine.m2p.num_layers, c.shine.m2p.num_heads, c.shine.m2p.ffn_mult = 4, hidden // 128, 2
    c.data.context_length, c.data.conversation_length = 1150, 2380
    c.batch_size, c.grad_accum = 32, 4
    c.mesh = (1, -1, 1)
    c.checkpoint_every, c.keep_checkpoints, c.log_every, c.eval_every = 1000, 3, 20, 1000
    s = STAGE_SETTINGS[c.stage]
    c.steps, c.optim.lr, c.optim.warmup_steps = s["steps"], s["lr"], s["warmup"]
    # the official data of each stage, as imported: the text corpus (parquet shards), ift_pwc (multi-QA),
    # ift_c1qa (single QA); validation on a held-out QA file the user imports (e.g. SQuAD's validation split)
    data = os.environ.get(DATA_ENV, "data/paper")
    c.data.pretrain_files = f"{data}/pretrain/*.parquet" if c.stage == "pretrain" else ""
    c.data.jsonl_train = {"ift_mqa": f"{data}/ift_pwc.jsonl", "ift_1qa": f"{data}/ift_c1qa.jsonl"}.get(c.stage, "")
    c.data.jsonl_eval = f"{data}/eval.jsonl"
    return c
