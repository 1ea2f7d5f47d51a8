"""How fast does a from-scratch decoder learn to copy? Synthetic copying with the tiny base's shapes.

    .venv/bin/python experiments/probe_copy_circuit.py [--span 24 | --span 16-32] [--batch 32] [--lr 3e-3]
        [--steps 200] [--length 0]

Each row is a span of random token ids, a separator, and the same span again; the loss is on the repeat only. A
fixed ``--span`` lets the model copy from a fixed distance (a positional shortcut); a range (``16-32``) needs
copying by content, the induction circuit reading a document relies on. ``--length`` > 0 left-pads each row to that
length with the attention mask (the training pipeline's layout). Prints the loss every 25 steps.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from flax import nnx

from shine_jax.base_model import BaseModel
from shine_jax.model.config import ModelConfig
from shine_jax.model.losses import causal_lm_loss


def rows(rng, batch: int, span: tuple[int, int], vocab: int, length: int):
    ids, mask, labels = [], [], []
    n_max = span[1]
    width = max(length, 2 * n_max + 1)
    for _ in range(batch):
        n = int(rng.integers(span[0], span[1] + 1))
        x = rng.integers(8, vocab, n).tolist()
        seq, lab = x + [2] + x, [-100] * (n + 1) + x
        pad = width - len(seq)
        ids.append([0] * pad + seq)
        labels.append([-100] * pad + lab)
        mask.append([0] * pad + [1] * len(seq))
    return np.array(ids), np.array(mask, np.int32), np.array(labels)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--span", default="16-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--length", type=int, default=0)
    p.add_argument("--vocab", type=int, default=2048)
    a = p.parse_args()
    lo, _, hi = a.span.partition("-")
    span = (int(lo), int(hi or lo))
    cfg = ModelConfig(family="llama", vocab_size=a.vocab, hidden_size=128, intermediate_size=256, num_layers=4,
                      num_heads=4, num_kv_heads=4, head_dim=32)
    graphdef, state = nnx.split(BaseModel.random(cfg, seed=0).decoder)
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(a.lr, weight_decay=0.01)
    opt = tx.init(params)

    def loss_fn(p, ids, mask, labels):
        return causal_lm_loss(nnx.merge(graphdef, p)(ids, mask), labels)[0]

    @jax.jit
    def step(p, o, ids, mask, labels):
        loss, g = jax.value_and_grad(loss_fn)(p, ids, mask, labels)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    rng = np.random.default_rng(0)
    t = time.time()
    for i in range(a.steps + 1):
        params, opt, loss = step(params, opt, *rows(rng, a.batch, span, a.vocab, a.length))
        if i % 25 == 0:
            print(f"step {i:4d}  copy loss {float(loss):.3f}  ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
