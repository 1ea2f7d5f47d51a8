"""The CPU sweep of the instruction recipe: LoRA rank x M2P depth on the shipped tiny base, scored by F1.

    shine-jax sweep --config configs/sweeps/tiny_cpu_ift.py --workdir workdirs/sweep_cpu_ift --eval

`tiny_cpu.py` measures SHINE pretraining (RECON/COMP) on bases trained from scratch, which cannot read a prompt.
This sweep measures what the demo measures: every point runs the tiny recipe's `pretrain` (100 steps) and `ift_mqa`
(900 steps on one-person documents) on the shipped base, whose reading curriculum makes in-context reading possible
(`configs/tiny.py`), and `--eval` scores `none` and `shine` on the first 32 one-person test documents (the split of
the last stage's corpus). Points: LoRA rank r in {2, 8} (M = 17 r memory tokens) x M2P depth in {2, 6}; the demo's
own point is r=4, depth 2. About 12 minutes a point on 2 CPU cores. `:seeds=N` adds every point with training seeds
1..N-1; `:quick` is a 2-point smoke version (a few steps each).
"""

import os

import ml_collections

from shine_jax.sweep import with_seed_repeats
from shine_jax.train.config import parse_arg

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.py")
RANKS = (2, 8)
DEPTHS = (2, 6)


def get_config(arg=None):
    a = parse_arg(arg, quick=False, seeds=1)
    c = ml_collections.ConfigDict()
    c.name = "tiny_cpu_ift_quick" if a.quick else "tiny_cpu_ift"
    c.stages = ("pretrain", "ift_mqa")
    train, ranks = {}, RANKS
    if a.quick:  # the stages' own steps are per-stage; these few apply to both
        train = {"steps": 4, "eval_every": 4, "checkpoint_every": 4, "optim.warmup_steps": 1, "eval_batches": 1}
        ranks = (2,)
    c.bases = [dict(name="tiny", config=TINY, stages=(), overrides={}, train={})]
    c.points = with_seed_repeats([dict(name=f"tiny_r{r}_m2p{d}", base="tiny",
                                       overrides={"shine.lora_rank": r, "shine.m2p.num_layers": d, **train})
                                  for r in ranks for d in DEPTHS], a.seeds)
    c.eval = dict(methods="none,shine", docs=8 if a.quick else 32, max_new_tokens=16, batch_size=32)
    return c
