"""Qwen3-0.6B (the paper's setting). Point model.hf_dir at a local HF folder of Qwen3-0.6B:
shine-jax train --config configs/qwen3_0p6b.py:pretrain --workdir W --config.model.hf_dir=/path/to/Qwen3-0.6B"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _paper import paper_config  # noqa: E402


def get_config(arg=None):
    return paper_config("qwen3_0p6b", os.environ.get("SHINE_JAX_HF_DIR", "checkpoints/Qwen3-0.6B"), hidden=1024, stage=arg, preset="qwen3-0.6b")
