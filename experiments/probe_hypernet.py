"""Does a fresh hypernetwork learn document-specific LoRAs? A short training run on the bundled documents that
prints the held-out answer loss next to the base's own (no LoRA), plus how the memory states vary.

    .venv/bin/python experiments/probe_hypernet.py BASE_DIR [--data-dir workdirs/tiny/data] [--builder-config single_person]
        [--steps 150] [--scale 0.01] [--lr 1e-3] [--mem-init-std 0]

A hypernetwork that reads the document drives the held-out loss clearly below the no-LoRA loss; one that has
only learnt to silence its own initial noise ends at the no-LoRA loss. ``--mem-init-std`` > 0 starts the memory
tokens from N(0, std) instead of the official zeros.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from shine_jax.base_model import BaseModel
from shine_jax.data import pipelines, tfds_builder
from shine_jax.model.losses import causal_lm_loss
from shine_jax.model.objective import shine_loss
from shine_jax.shine import Shine
from shine_jax.train.config import hyper_config, load_config
from shine_jax.train.loop import corpus_overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("--data-dir", default="workdirs/tiny/data")
    p.add_argument("--builder-config", default="single_person")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--scale", type=float, default=1e-2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mem-init-std", type=float, default=0.0)
    p.add_argument("--token-pe-std", type=float, default=0.0,
                   help="> 0: start the M2P token position embeddings from N(0, std) instead of the official zeros")
    p.add_argument("--evidence", type=int, default=128)
    p.add_argument("--oracle", action="store_true",
                   help="sanity check: the evidence is only the answer of one question, which is then asked")
    a = p.parse_args()
    cfg = load_config("configs/tiny.py:ift_mqa", [f"shine.scale={a.scale}"])
    base = BaseModel.load(a.base)
    tok = base.tokenizer
    split = lambda s: tfds_builder.load_split(f"{a.data_dir}/tfds", s, config=a.builder_config, **corpus_overrides(cfg))  # noqa: E731
    train, val = split("train"), split("validation")

    def batch_of(records):
        if a.oracle:  # the answer alone is the document: the easiest possible reading
            records = [{"context": r["qa"][0]["answers"][0], "qa": r["qa"][:1]} for r in records]
        rows = [pipelines.shine_example(tok, r["context"], pipelines.qa_turns(r), (a.evidence, 128)) for r in records]
        return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}

    held_out = batch_of([val[i] for i in range(64)])
    shine = Shine.create(base, hyper_config(cfg), seed=0, max_evidence_length=a.evidence)
    params = nnx.to_pure_dict(shine.hyper_state)
    if a.mem_init_std > 0:
        params["mem_tokens"] = jnp.asarray(np.random.default_rng(0).normal(0, a.mem_init_std, params["mem_tokens"].shape), jnp.float32)
    if a.token_pe_std > 0:
        pe = params["m2p"]["token_pe"]
        params["m2p"]["token_pe"] = jnp.asarray(np.random.default_rng(1).normal(0, a.token_pe_std, pe.shape), jnp.float32)
    dgraph, dstate, hgraph, hstate = base.graphdef, base.state, shine.hyper_graphdef, shine.hyper_state

    def hyper(p_):
        state = nnx.State(hstate)
        nnx.replace_by_pure_dict(state, p_)
        return nnx.merge(hgraph, state)

    def loss_fn(p_, b):
        return shine_loss(nnx.merge(dgraph, dstate), hyper(p_), b)[0]

    mem = np.asarray(jax.jit(lambda p_, ids, m: hyper(p_).memory_states(nnx.merge(dgraph, dstate), ids, m))(
        params, held_out["evidence_ids"][:32], held_out["evidence_mask"][:32]))  # [B, L, M, H]
    for layer in range(mem.shape[1]):
        x = mem[:, layer]
        total = x.var(axis=(0, 1)).sum()
        print(f"memory states, layer {layer}: share of variance across documents {x.var(axis=0).mean(0).sum() / total:.4f}, "
              f"across memory tokens {x.mean(0).var(0).sum() / total:.4f}")
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(a.lr, weight_decay=0.01))
    opt = tx.init(params)

    @jax.jit
    def step(p_, o, b):
        loss, g = jax.value_and_grad(loss_fn)(p_, b)
        u, o = tx.update(g, o, p_)
        return optax.apply_updates(p_, u), o, loss

    evaluate = jax.jit(loss_fn)
    no_lora, _ = causal_lm_loss(base.logits(held_out["input_ids"], held_out["attention_mask"]), held_out["labels"])
    print(f"held-out answer loss: no LoRA {float(no_lora):.4f}, fresh hypernetwork {float(evaluate(params, held_out)):.4f}")
    rng, losses, t0 = np.random.default_rng(1), [], time.time()
    for i in range(a.steps):
        params, opt, loss = step(params, opt, batch_of([train[int(j)] for j in rng.integers(0, len(train), a.batch)]))
        losses.append(float(loss))
        if (i + 1) % 25 == 0 or i + 1 == a.steps:
            print(f"step {i + 1}: train {np.mean(losses[-25:]):.4f}  held-out {float(evaluate(params, held_out)):.4f}  "
                  f"(no LoRA {float(no_lora):.4f})  {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
