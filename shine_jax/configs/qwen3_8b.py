"""Qwen3-8B (the paper's setting). Point model.hf_dir at a local HF folder of Qwen3-8B (or set SHINE_JAX_QWEN3_8B_DIR; the
data: SHINE_JAX_PAPER_DATA, see the README's one-GPU-host walk-through):
shine-jax train --config configs/qwen3_8b.py:pretrain --workdir W --config.model.hf_dir=/path/to/Qwen3-8B"""

import os

from shine_jax.train.paper import paper_config


def get_config(arg=None):
    hf_dir = os.environ.get("SHINE_JAX_QWEN3_8B_DIR", "checkpoints/Qwen3-8B")
    return paper_config("qwen3_8b", hf_dir, hidden=4096, stage=arg, preset="qwen3-8b")
