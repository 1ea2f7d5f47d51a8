"""Training stages run to completion (``final/`` included) as 2 processes x 2 CPU devices on localhost.

    python -m tests.multidevice.multihost_stage worker PORT PID BASEDIR   -> one of the two processes
    python -m tests.multidevice.multihost_stage check BASEDIR             -> 1 process x 1 device, afterwards

Each worker trains in its own workdir ``BASEDIR/host<PID>`` (hosts with local disks), with the Orbax checkpoints
in the shared ``BASEDIR/ckpt``: base_pretrain, then pretrain, which starts from that host's own
``base_pretrain/final``. Then both save the base model to one folder of the shared ``BASEDIR/shared``, which
process 0 alone must write, and load ``BASEDIR/one_host``, a model folder saved by a one-process run. Each prints
RESULT lines: a hash of every folder's parameters as loaded on that host, and which processes found themselves
first on a path's filesystem. Last, a damaged checkpoint: a 6-step ``base_pretrain`` run (checkpoints at 4 and 6
kept in the shared ``BASEDIR/ckpt_fallback``), then process 0 empties every file of step 6's state and both
processes run the same stage again: each sets step 6 aside once (renamed by process 0 alone), both resume at step 4,
and the final parameters equal the undamaged run's. Then a preemption: the same 6-step run in another checkpoint
directory, where process 1 alone gets SIGTERM after step 1; both processes stop at one step (Orbax's preemption sync
point, a step or more later: the notice travels through the coordination service) with a checkpoint of it, resume
there, and end with the undamaged run's parameters.

``check`` loads every final folder in a fresh single process and compares its parameters with the ones in the
stage's last Orbax checkpoint (the trained state), printing OK. (A 1-process run would not give the same
parameters: the data are sharded by process before shuffling.)
"""

import os
import sys

mode = sys.argv[1]
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={1 if mode == 'check' else 2}"
os.environ["JAX_PLATFORMS"] = "cpu"

import hashlib  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

STAGES = ("base_pretrain", "pretrain")
STEPS = 2


def final_params(final: pathlib.Path) -> dict:
    """The trained parameters in a final folder, as the next stage reads them."""
    from shine_jax.base_model import BaseModel
    from shine_jax.shine import Shine

    if (final / "shine.json").is_file():
        return Shine.load(final).hyper_params()
    return BaseModel.load(final).params()


def flat(tree) -> dict:
    """``{path: array}`` with every key as a string (Orbax restores the integer keys of lists as strings)."""
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(x)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def digest(tree) -> str:
    h = hashlib.sha256()
    for path, x in sorted(jax.tree_util.tree_leaves_with_path(tree), key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def worker(port: str, pid: int, basedir: pathlib.Path):
    from shine_jax import distributed
    distributed.initialize(f"localhost:{port}", 2, pid, timeout_s=60)
    from shine_jax import multihost
    from shine_jax import sharding as shd
    from shine_jax.base_model import BaseModel
    from shine_jax.train.loop import run_stage
    from tests.train_utils import small_config

    assert jax.device_count() == 4 and jax.process_count() == 2, jax.devices()
    multihost.GATHER_BYTES = 4096  # gather the larger leaves in row blocks, as a large model's are
    workdir = basedir / f"host{pid}"
    for stage in STAGES:
        cfg = small_config(stage, STEPS, ["batch_size=8", "eval_batches=1", f"checkpoint_dir='{basedir / 'ckpt'}'"])
        run_stage(cfg, workdir, progress=False)
        print(f"RESULT {stage} {digest(final_params(workdir / stage / 'final'))}", flush=True)

    # one path that both processes see (one filesystem): found as such, and written by process 0 alone
    print(f"RESULT first_own {multihost._first_on_this_filesystem(workdir / 'x')}", flush=True)
    print(f"RESULT first_shared {multihost._first_on_this_filesystem(basedir / 'shared' / 'x')}", flush=True)
    model = BaseModel.load(workdir / "base_pretrain" / "final").shard(shd.make_mesh((1, -1, 1)))
    model.save(basedir / "shared" / "model")
    print(f"RESULT shared {digest(final_params(basedir / 'shared' / 'model'))}", flush=True)
    # a folder that a one-process run saved (its arrays carry that run's device placement) loads here too
    print(f"RESULT one_host {digest(final_params(basedir / 'one_host'))}", flush=True)
    undamaged = fallback(pid, basedir, workdir / "fallback")
    preemption(pid, basedir, workdir / "preemption", undamaged)


def fallback_config(ckpts: pathlib.Path):
    from tests.train_utils import small_config

    return small_config("base_pretrain", 6, ["batch_size=8", "eval_batches=1", "checkpoint_every=2",
                                             f"checkpoint_dir='{ckpts}'"])


def fallback(pid: int, basedir: pathlib.Path, workdir: pathlib.Path) -> str:
    import warnings

    from jax.experimental import multihost_utils

    from shine_jax.train.loop import run_stage

    ckpts = basedir / "ckpt_fallback"
    cfg = fallback_config(ckpts)
    run_stage(cfg, workdir, progress=False)
    undamaged = digest(final_params(workdir / "base_pretrain" / "final"))
    multihost_utils.sync_global_devices("trained")
    if pid == 0:
        for f in (ckpts / "base_pretrain" / "6" / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"")
    multihost_utils.sync_global_devices("damaged")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_stage(cfg, workdir, progress=False)
    aside = [str(w.message) for w in caught if "set aside" in str(w.message)]
    print(f"RESULT fallback_warnings {len(aside)} {'step 6' in ''.join(aside)}", flush=True)
    print(f"RESULT fallback_resumed {summary['resumed_from']}", flush=True)
    print(f"RESULT fallback_same {digest(final_params(workdir / 'base_pretrain' / 'final')) == undamaged}",
          flush=True)
    multihost_utils.sync_global_devices("resumed")
    print(f"RESULT fallback_steps {','.join(sorted(p.name for p in (ckpts / 'base_pretrain').iterdir()))}",
          flush=True)
    return undamaged


def preemption(pid: int, basedir: pathlib.Path, workdir: pathlib.Path, undamaged: str):
    import re

    from jax.experimental import multihost_utils

    from shine_jax.train.loop import TERM_ENV, run_stage
    from shine_jax.train.preemption import Preempted

    ckpts = basedir / "ckpt_preemption"
    cfg = fallback_config(ckpts)
    if pid == 1:
        os.environ[TERM_ENV] = "1"
    try:
        run_stage(cfg, workdir, progress=False)
        stopped = "not stopped"
    except Preempted as e:
        stopped = str(e)
    os.environ.pop(TERM_ENV, None)
    step = re.match(r"stopped by SIGTERM after step (\d+): checkpoint of step \1 saved", stopped)
    step = step.group(1) if step else repr(stopped)
    multihost_utils.sync_global_devices("preempted")
    saved = sorted(p.name for p in (ckpts / "base_pretrain").iterdir())
    print(f"RESULT preemption_stopped {step} {','.join(saved)}", flush=True)
    summary = run_stage(cfg, workdir, progress=False)
    print(f"RESULT preemption_resumed {summary['resumed_from']}", flush=True)
    print(f"RESULT preemption_same {digest(final_params(workdir / 'base_pretrain' / 'final')) == undamaged}",
          flush=True)


def check(basedir: pathlib.Path):
    import orbax.checkpoint as ocp

    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for stage in STAGES:
        path = basedir / "ckpt" / stage / str(STEPS) / "state"
        with ocp.StandardCheckpointer() as ckptr:  # saved by 2 processes: restore onto this one device
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                                  ckptr.metadata(path).item_metadata)
            trained = jax.tree.map(np.asarray, ckptr.restore(path, target)["params"])
        for host in ("host0", "host1"):
            loaded = flat(final_params(basedir / host / stage / "final"))
            assert loaded.keys() == flat(trained).keys(), (stage, host)
            for k, v in flat(trained).items():
                np.testing.assert_array_equal(loaded[k], v, err_msg=f"{stage} {host} {k}")
    print(f"RESULT one_host {digest(final_params(basedir / 'one_host'))}", flush=True)
    print("OK", flush=True)


if __name__ == "__main__":
    if mode == "worker":
        worker(sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4]))
    else:
        check(pathlib.Path(sys.argv[2]))
