"""Run with 8 fake CPU devices: SHINE training steps on mesh 2x2x2 equal the same steps on 1 device.

Compared: the loss and the gradient of every trainable tensor (relative to the largest gradient), and the loss of
the following step (which depends on the updated parameters). Parameters themselves are not compared leaf by
leaf: Adam turns the ~1e-10 rounding noise of gradients that are zero in exact arithmetic (e.g. the attention's
key bias) into +-lr updates, on one device as on eight."""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import numpy as np

from shine_jax import sharding as shd
from shine_jax.train import loop
from tests.train_utils import random_shine_batch, shine_step_setup, small_config


def run(cfg, mesh, batch):
    with jax.set_mesh(mesh):  # as the trainer runs: activations pinned to the batch sharding
        return _run(cfg, mesh, batch)


def _run(cfg, mesh, batch):
    task, state, step = shine_step_setup(cfg, mesh)
    gbatch = loop.to_global(batch, cfg, mesh)
    first_micro = jax.tree.map(lambda x: x[0], gbatch)
    grads = jax.jit(jax.grad(lambda p: task.loss_fn(p, task.frozen, first_micro)[0]))(state["params"])
    state, m1 = step(state, task.frozen, gbatch)
    state, m2 = step(state, task.frozen, gbatch)
    return jax.tree.map(np.asarray, grads), float(m1["loss"]), float(m2["loss"])


def main():
    assert jax.device_count() == 8
    cfg = small_config("pretrain", steps=10, extra=["batch_size=8", "grad_accum=2", "optim.warmup_steps=0",
                                                    "data.context_length=48", "data.conversation_length=40"])
    batch = random_shine_batch(cfg, 8)
    g1, a1, b1 = run(cfg, shd.make_mesh((1, 1, 1), jax.devices()[:1]), batch)
    g8, a8, b8 = run(cfg, shd.make_mesh((2, 2, 2)), batch)
    scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g1))
    gerr = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g8))) / scale
    assert abs(a1 - a8) <= 1e-5 * abs(a1), (a1, a8)
    assert abs(b1 - b8) <= 1e-4 * abs(b1), (b1, b8)
    assert b1 < a1, "the step did not lower the loss"
    assert gerr <= 1e-5, gerr
    print(f"OK losses {a1:.6f}/{a8:.6f} then {b1:.6f}/{b8:.6f}; grads max diff / max grad {gerr:.2e}")


if __name__ == "__main__":
    sys.exit(main())
