"""The CPU scaling sweep: 2 base sizes x 2 LoRA ranks x 2 M2P depths of the `tiny` family, SHINE pretraining.

    shine-jax sweep --config configs/sweeps/tiny_cpu.py --workdir workdirs/sweep_cpu

Each base (d=64 and d=128, both 4 layers, heads of 32) is trained from scratch once (`base_pretrain`, shared by its
four points); every point then runs the SHINE `pretrain` stage (RECON/COMP), whose validation loss is the paper's
scaling metric. Shorter than configs/tiny.py everywhere (128-token evidence, 300 base steps, 120 SHINE steps, a
smaller corpus) so that the whole sweep fits in about 25 minutes on 2 CPU cores. With heads of 32 and an FFN of 2d
both bases have M = 17 r memory tokens. `:seeds=N` adds every point again with training seeds 1..N-1 (in the same
workdir: finished points and the bases are reused) to measure the seed-to-seed spread; `:quick` is a 2-point smoke
version (a few steps each).
"""

import os

import ml_collections

from shine_jax.sweep import with_seed_repeats
from shine_jax.train.config import parse_arg

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.py")

COMMON = {  # every stage of every base and point
    "model.source": "scratch",  # SHINE on the base each sweep base trains, not the shipped one
    "data.num_people": 2000, "data.train_docs": 4000, "data.eval_docs": 64, "data.tokenizer_vocab": 1024,
    "data.lm_length": 128, "data.context_length": 128, "data.conversation_length": 144,
    "eval_batches": 4, "log_every": 5,
    "shine.metalora_rank": 8,  # the recorded sweep's value (configs/tiny.py has since moved to 32)
}
BASES = {  # name -> model shape
    "d64": {"model.hidden_size": 64, "model.intermediate_size": 128, "model.num_layers": 4, "model.num_heads": 2,
            "model.num_kv_heads": 2, "model.head_dim": 32},
    "d128": {"model.hidden_size": 128, "model.intermediate_size": 256, "model.num_layers": 4, "model.num_heads": 4,
             "model.num_kv_heads": 4, "model.head_dim": 32},
}
BASE_TRAIN = {"steps": 300, "batch_size": 16, "optim.warmup_steps": 20, "eval_every": 300, "checkpoint_every": 150}
POINT_TRAIN = {"steps": 120, "optim.warmup_steps": 10, "eval_every": 120, "checkpoint_every": 60}
RANKS = (2, 8)
DEPTHS = (2, 6)


def get_config(arg=None):
    a = parse_arg(arg, quick=False, seeds=1)
    seeds, arg = a.seeds, "quick" if a.quick else None
    c = ml_collections.ConfigDict()
    c.name = "tiny_cpu" if arg is None else "tiny_cpu_quick"
    c.stages = ("pretrain",)
    base_train, point_train = dict(BASE_TRAIN), dict(POINT_TRAIN)
    bases, ranks, depths = BASES, RANKS, DEPTHS
    if arg == "quick":
        base_train.update(steps=10, eval_every=10, checkpoint_every=10, **{"optim.warmup_steps": 2})
        point_train.update(steps=6, eval_every=6, checkpoint_every=6, **{"optim.warmup_steps": 2})
        bases, ranks, depths = {"d64": BASES["d64"]}, (2,), (2, 6)
    c.bases = [dict(name=name, config=TINY, stages=("base_pretrain",), overrides={**COMMON, **shape},
                    train=base_train) for name, shape in bases.items()]
    points = [dict(name=f"{b}_r{r}_m2p{d}", base=b,
                   overrides={"shine.lora_rank": r, "shine.m2p.num_layers": d, **point_train})
              for b in bases for r in ranks for d in depths]
    c.points = with_seed_repeats(points, seeds)  # the same bases
    c.eval = dict(methods="none,shine", docs=8, max_new_tokens=16, batch_size=8)
    return c
