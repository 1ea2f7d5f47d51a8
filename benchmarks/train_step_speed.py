"""Train-step speed: our step against the plain-autodiff formulation it replaced, side by side in one process.

    .venv/bin/python benchmarks/train_step_speed.py [--steps 9] [--case issue15|tiny_base|tiny_ift]

Each case builds one jitted step twice: with the library as it is, and with the two pieces the speed work replaced
swapped back in (``reference_attention``: 5-D grouped einsums, a select on the scores and autodiff of the softmax;
``reference_lm_loss``: logits for every position, shifted by slicing). The runs alternate, so both sides see the
same machine load, and the table gives medians. Cases:

- ``issue15``: the SHINE train step at the speed issue's shapes (random Qwen3-style base, hidden 256, 6 layers,
  4 heads / 2 KV heads, intermediate 768, vocab 4096; LoRA rank 4, Meta LoRA 16, M2P 4 x 4; batch 4, evidence 256,
  conversation 64 with labels on its last 16);
- ``tiny_base``: the tiny base's pretraining step (``configs/tiny.py:base_pretrain``: batch 16 x 192, a quarter
  of the positions labelled);
- ``tiny_ift``: the tiny SHINE multi-QA step (``configs/tiny.py:ift_mqa``: batch 8, evidence 296, conversation
  160, a fifth of the positions labelled).

Forward = the loss alone, step = loss + gradient + optimizer update.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from shine_jax import sharding as shd
from shine_jax.base_model import BaseModel
from shine_jax.model import decoder as decoder_lib
from shine_jax.model import layers
from shine_jax.train import loop
from shine_jax.train import optimizer as optim
from shine_jax.train.config import load_config, model_config
from shine_jax.train.step import init_state, make_train_step

CASES = {
    "issue15": ("configs/tiny.py:ift_mqa", [
        "model.hidden_size=256", "model.intermediate_size=768", "model.num_layers=6", "model.num_heads=4",
        "model.num_kv_heads=2", "model.head_dim=64", "model.vocab_size=4096", "shine.lora_rank=4",
        "shine.metalora_rank=16", "shine.m2p.num_layers=4", "shine.m2p.num_heads=4", "batch_size=4",
        "data.context_length=256", "data.conversation_length=64"], 16 / 64),
    "tiny_base": ("configs/tiny.py:base_pretrain", [], 0.25),
    "tiny_ift": ("configs/tiny.py:ift_mqa", [], 0.2),
}


def reference_attention(q, k, v, mask):
    """The formulation before the speed work: grouped 5-D einsums, select on the scores, autodiff softmax."""
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    qg = q.reshape(b, t, nkv, nh // nkv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) * (hd**-0.5)
    m = mask[:, None, None, :, :]
    scores = jnp.where(m, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(jnp.any(m, axis=-1, keepdims=True), probs, 0.0).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, nh, hd)


def reference_lm_loss(self, input_ids, attention_mask, labels, loras=()):
    """Logits for every position, then HF's shift by slicing them."""
    logits = self(input_ids, attention_mask, loras=loras)[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != -100
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    n = valid.sum()
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n, 1), n


class Reference:
    """Swap the replaced formulations in (inside ``with``) and out again."""

    def __enter__(self):
        self.saved = layers.gqa_attention, decoder_lib.Decoder.lm_loss
        layers.gqa_attention, decoder_lib.Decoder.lm_loss = reference_attention, reference_lm_loss

    def __exit__(self, *exc):
        layers.gqa_attention, decoder_lib.Decoder.lm_loss = self.saved


def labels_for(rng, ids, share):
    """Labels on a ``share`` of the positions: the last ones of each row (answers end a conversation)."""
    labels = np.array(ids)
    labels[:, : int(round(ids.shape[1] * (1 - share)))] = -100
    return labels


def setup(case, rng):
    """The case's config, task, optimizer, initial state and one batch (``[accum=1, B, T]``) of random tokens."""
    spec, overrides, share = CASES[case]
    cfg = load_config(spec, overrides)
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    vocab = cfg.model.vocab_size or 2048
    base = BaseModel.random(model_config(cfg, vocab), seed=0)
    if cfg.stage == "base_pretrain":
        task = loop.lm_task(cfg, base, mesh)
        ids = rng.integers(8, vocab, (cfg.batch_size, cfg.data.lm_length))
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels_for(rng, ids, share)}
    else:
        task = loop.shine_task(cfg, base, mesh, workdir=None)
        b, tc, tq = cfg.batch_size, cfg.data.context_length, cfg.data.conversation_length
        ids = rng.integers(8, vocab, (b, tq))
        batch = {"evidence_ids": rng.integers(8, vocab, (b, tc)), "evidence_mask": np.ones((b, tc), np.int32),
                 "input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels_for(rng, ids, share)}
    batch = {k: jnp.asarray(v[None]) for k, v in batch.items()}  # one micro-batch: [accum=1, B, T]
    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels)
    return cfg, task, tx, init_state(task.params, tx), batch


def build(case, rng):
    cfg, task, tx, state, batch = setup(case, rng)
    one = {k: v[0] for k, v in batch.items()}

    def jitted():
        step = jax.jit(make_train_step(task.loss_fn, tx))
        fwd = jax.jit(lambda p: task.loss_fn(p, task.frozen, one)[0])
        return (lambda: step(state, task.frozen, batch)[1]["loss"]), (lambda: fwd(state["params"]))

    ours = jitted()
    with Reference():
        ref = jitted()
        for fn in ref:
            jax.block_until_ready(fn())  # trace and compile while the reference is swapped in
    return cfg, ours, ref


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--case", action="append", choices=sorted(CASES))
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; medians of {args.steps} alternating runs\n")
    print("| case | reference step | our step | speed-up | reference fwd | our fwd | our step / fwd |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in args.case or ["issue15", "tiny_base", "tiny_ift"]:
        cfg, ours, ref = build(case, rng)
        times = {name: [] for name in ("ours_step", "ours_fwd", "ref_step", "ref_fwd")}
        for fn in (*ours, *ref):
            jax.block_until_ready(fn())
        for _ in range(args.steps):
            for name, fn in zip(times, (*ours, *ref)):
                t = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - t)
        m = {k: float(np.median(v)) for k, v in times.items()}
        print(f"| {case} | {m['ref_step'] * 1e3:.0f} ms | {m['ours_step'] * 1e3:.0f} ms | "
              f"{m['ref_step'] / m['ours_step']:.2f}x | {m['ref_fwd'] * 1e3:.0f} ms | {m['ours_fwd'] * 1e3:.0f} ms | "
              f"{m['ours_step'] / m['ours_fwd']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
