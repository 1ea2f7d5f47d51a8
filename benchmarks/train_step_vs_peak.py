"""Speed of the SHINE train step and of document -> LoRA, as ratios measured side by side in one run.

    .venv/bin/python benchmarks/train_step_vs_peak.py [--config configs/tiny.py:ift_mqa] [--steps 5]

1. Float32 matmul peak of this machine (jnp.dot of 2048x2048 matrices), measured first.
2. The jitted SHINE train step of the config (random base, synthetic batch): analytic model FLOPs per step / time
   -> achieved FLOP/s and its ratio to the peak (model FLOPs utilisation).
3. Document -> LoRA: one generate_lora call per batch of documents vs test-time training (SFT, 20 epochs) on the
   same documents: seconds per document and their ratio.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn, reps):
    jax.block_until_ready(fn())  # compile + warm up
    t = time.perf_counter()
    for _ in range(reps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / reps


def matmul_peak(n=2048, reps=10) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed(lambda: f(a), reps)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/tiny.py:ift_mqa")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()

    from shine_jax import sharding as shd
    from shine_jax.base_model import BaseModel
    from shine_jax.eval.methods import EvalSettings, TestTimeTraining
    from shine_jax.shine import Shine
    from shine_jax.train import loop
    from shine_jax.train import optimizer as optim
    from shine_jax.train.config import hyper_config, load_config, model_config
    from shine_jax.train.step import init_state, make_train_step

    peak = matmul_peak()
    cfg = load_config(args.config)
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    base = BaseModel.random(model_config(cfg, 2048), seed=0)
    task = loop.shine_task(cfg, base, mesh, workdir=None)
    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels)
    state = init_state(task.params, tx)
    step = jax.jit(make_train_step(task.loss_fn, tx))
    rng = np.random.default_rng(0)
    b, tc, tq, a = cfg.batch_size // cfg.grad_accum, cfg.data.context_length, cfg.data.conversation_length, cfg.grad_accum
    batch = {"evidence_ids": rng.integers(1, 2048, (a, b, tc)), "evidence_mask": np.ones((a, b, tc), np.int32),
             "input_ids": rng.integers(1, 2048, (a, b, tq)), "attention_mask": np.ones((a, b, tq), np.int32),
             "labels": rng.integers(1, 2048, (a, b, tq))}
    step_s = timed(lambda: step(state, task.frozen, batch)[1]["loss"], args.steps)
    achieved = task.step_flops / step_s

    shine = Shine.create(base, hyper_config(cfg))
    ids = rng.integers(1, 2048, (16, tc))
    mask = np.ones_like(ids)
    gen_s = timed(lambda: shine.generate_lora(ids, mask), 3) / 16
    sft = TestTimeTraining(EvalSettings(sft_epochs=20), tc)
    docs = [" ".join(["word"] * (tc // 2))] * 16
    base.tokenizer = None
    enc = lambda texts, n: (ids, mask)  # noqa: E731  (same token ids as the LoRA generation above)
    base.encode = enc
    sft_s = timed(lambda: sft.prepare(shine, docs), 1) / 16

    print(f"config {args.config}: batch {cfg.batch_size}, evidence {tc}, conversation {tq}, devices {jax.device_count()}")
    print("| measurement | value |\n|---|---:|")
    print(f"| float32 matmul peak (2048^3) | {peak / 1e9:.1f} GFLOP/s |")
    print(f"| SHINE train step | {step_s * 1e3:.0f} ms, {achieved / 1e9:.1f} GFLOP/s (model FLOPs) |")
    print(f"| train step / matmul peak (MFU) | {achieved / peak:.2f} |")
    print(f"| document -> LoRA, SHINE (batch 16) | {gen_s * 1e3:.1f} ms / doc |")
    print(f"| document -> LoRA, SFT 20 epochs (batch 16) | {sft_s * 1e3:.1f} ms / doc |")
    print(f"| SFT time / SHINE time | {sft_s / gen_s:.1f}x |")


if __name__ == "__main__":
    main()
