"""Qwen3-0.6B (the paper's setting). Point model.hf_dir at a local HF folder of Qwen3-0.6B (or set SHINE_JAX_QWEN3_0P6B_DIR; the
data: SHINE_JAX_PAPER_DATA, see the README's one-GPU-host walk-through):
shine-jax train --config configs/qwen3_0p6b.py:pretrain --workdir W --config.model.hf_dir=/path/to/Qwen3-0.6B"""

import os

from shine_jax.train.paper import paper_config


def get_config(arg=None):
    hf_dir = os.environ.get("SHINE_JAX_QWEN3_0P6B_DIR", "checkpoints/Qwen3-0.6B")
    return paper_config("qwen3_0p6b", hf_dir, hidden=1024, stage=arg, preset="qwen3-0.6b")
