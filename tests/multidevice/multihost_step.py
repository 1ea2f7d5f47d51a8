"""One SHINE training step as a 2-process x 2-device job on localhost, or as 1 process x 4 devices.

    python -m tests.multidevice.multihost_step single              -> prints RESULT loss checksum
    python -m tests.multidevice.multihost_step worker PORT PID     -> one of the two processes

Each process feeds only its own half of the global batch (data sharded by process), as the trainer does."""

import os
import sys

mode = sys.argv[1]
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={4 if mode == 'single' else 2}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main():
    from shine_jax import distributed
    if mode == "worker":
        distributed.initialize(f"localhost:{sys.argv[2]}", 2, int(sys.argv[3]), timeout_s=60)
    from shine_jax import sharding as shd
    from shine_jax.train import loop
    from tests.train_utils import random_shine_batch, shine_step_setup, small_config

    assert jax.device_count() == 4, jax.devices()
    cfg = small_config("pretrain", 10, ["batch_size=8", "grad_accum=2", "optim.warmup_steps=0"])
    mesh = shd.make_mesh((1, -1, 1))
    task, state, step = shine_step_setup(cfg, mesh)
    batch = random_shine_batch(cfg, 8)
    # the global batch is [grad_accum=2, micro=4]; process p holds micro rows p*2..p*2+1 of every accumulation step
    n, p = jax.process_count(), jax.process_index()
    local = {k: v.reshape(2, 4, -1)[:, p * (4 // n):(p + 1) * (4 // n)].reshape(-1, v.shape[-1])
             for k, v in batch.items()}
    for _ in range(2):
        state, m = step(state, task.frozen, loop.to_global(local, cfg, mesh))
    from jax.experimental import multihost_utils
    params = multihost_utils.process_allgather(state["params"], tiled=True)
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))
    print(f"RESULT {float(m['loss']):.9f} {checksum:.9f}", flush=True)


if __name__ == "__main__":
    main()
