"""The paper's scaling sweeps on Qwen3 (for accelerators): base size, LoRA rank, M2P depth and Meta LoRA rank.

    shine-jax sweep --config configs/sweeps/qwen3_paper.py:AXIS[,size=0p6b][,steps=N] --workdir W [--point-index I]
    shine-jax sweep --config configs/sweeps/qwen3_paper.py:rank --workdir W --dry-run     # sizes, FLOPs, commands

AXIS is one of
  size      Qwen3-0.6B / 1.7B / 8B at the paper's setting (r=8, M2P depth 4, Meta LoRA rank 128)
  rank      LoRA rank r in 4, 8, 16, 32              (on `size`, default 0p6b; the rest at the paper's setting)
  depth     M2P depth in 2, 4, 6, 8                  (idem)
  metarank  Meta LoRA rank in 4, 16, 32, 64, 128     (idem)
  grid      every size x rank x depth (48 points, Meta LoRA rank 128)
Every point runs the SHINE `pretrain` stage of configs/qwen3_*.py (20k steps; `steps=N` shortens all points), whose
validation loss/perplexity is the paper's scaling metric. The base models are pretrained (no base stage): put the HF
folders Qwen3-0.6B, Qwen3-1.7B, Qwen3-8B under $SHINE_JAX_QWEN3_ROOT (default `checkpoints`). The mesh per size is
below (FSDP over all devices of one job: 8 devices for 0.6B and 1.7B, 32 for 8B with one example per device);
check a point with `shine-jax plan --config configs/qwen3_8b.py:pretrain --devices 32 --mesh 1,32,1 --hbm 80GiB`.
M = r * sum(in+out) / H is 22 r (0.6B), 19 r (1.7B) and 18.5 r (8B: r must be even).
"""

import os

import ml_collections

from shine_jax.train.config import ConfigError, parse_arg

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.environ.get("SHINE_JAX_QWEN3_ROOT", "checkpoints")
SIZES = {  # name -> (config file, HF folder, per-size overrides: mesh and batch layout)
    "0p6b": ("qwen3_0p6b.py", "Qwen3-0.6B", {"mesh": (1, 8, 1), "batch_size": 32, "grad_accum": 4}),
    "1p7b": ("qwen3_1p7b.py", "Qwen3-1.7B", {"mesh": (1, 8, 1), "batch_size": 32, "grad_accum": 4}),
    "8b": ("qwen3_8b.py", "Qwen3-8B", {"mesh": (1, 32, 1), "batch_size": 32, "grad_accum": 1}),
}
PAPER = {"shine.lora_rank": 8, "shine.m2p.num_layers": 4, "shine.metalora_rank": 128}
AXES = {"rank": ("shine.lora_rank", (4, 8, 16, 32)), "depth": ("shine.m2p.num_layers", (2, 4, 6, 8)),
        "metarank": ("shine.metalora_rank", (4, 16, 32, 64, 128))}
SHORT = {"shine.lora_rank": "r", "shine.m2p.num_layers": "m2p", "shine.metalora_rank": "meta"}


def parse(arg):
    a = parse_arg(arg, positional=("axis",), axis="size", size="0p6b", steps=0)
    if a.axis not in ("size", "grid", *AXES):
        raise ConfigError(f"unknown axis {a.axis!r}; use AXIS[,size=0p6b|1p7b|8b][,steps=N] with AXIS one of "
                          f"size, rank, depth, metarank, grid")
    if a.size not in SIZES:
        raise ConfigError(f"unknown size {a.size!r}; use one of {', '.join(SIZES)}")
    return a.axis, a.size, a.steps or None


def name_of(size, settings):
    return f"qwen3_{size}_" + "_".join(f"{SHORT[k]}{v}" for k, v in settings.items())


def get_config(arg=None):
    axis, size, steps = parse(arg)
    c = ml_collections.ConfigDict()
    c.name = f"qwen3_paper_{axis}" + (f"_{size}" if axis in AXES else "")
    c.stages = ("pretrain",)
    c.bases = [dict(name=s, config=os.path.join(CONFIGS, cfg), stages=(),
                    overrides={"model.hf_dir": os.path.join(ROOT, folder), **layout})
               for s, (cfg, folder, layout) in SIZES.items()]
    extra = {} if steps is None else {"steps": steps, "optim.warmup_steps": min(400, steps // 10),
                                      "eval_every": steps, "checkpoint_every": max(1, min(1000, steps // 4))}
    if axis == "size":
        settings = [(s, dict(PAPER)) for s in SIZES]
    elif axis == "grid":
        settings = [(s, {**PAPER, "shine.lora_rank": r, "shine.m2p.num_layers": d})
                    for s in SIZES for r in AXES["rank"][1] for d in AXES["depth"][1]]
    else:
        field, values = AXES[axis]
        settings = [(size, {**PAPER, field: v}) for v in values]
    c.points = [dict(name=name_of(s, st), base=s, overrides={**st, **extra}) for s, st in settings]
    c.eval = dict(methods="none,shine", docs=64, max_new_tokens=32, batch_size=32)
    return c
