"""Sharding rules and the 8-fake-device equality checks (each multi-device check runs in its own process)."""

import os
import subprocess
import sys

import pytest
from jax.sharding import PartitionSpec as P

from shine_jax import sharding as shd
from tests.conftest import REPO


def run_multidevice(module: str, timeout: int = 300) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", module], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_logical_rules_drop_axes_that_do_not_divide():
    class FakeMesh:
        shape = {"data": 2, "fsdp": 2, "tensor": 2}
    assert shd.logical_to_spec(("layers", "embed", "heads"), (3, 64, 64), FakeMesh()) == P(None, "fsdp", "tensor")
    assert shd.logical_to_spec(("vocab", "embed"), (49153, 64), FakeMesh()) == P(None, "fsdp")
    assert shd.logical_to_spec(("batch", None), (4, 7), FakeMesh()) == P(("data", "fsdp"), None)
    assert shd.logical_to_spec(("batch", None), (2, 7), FakeMesh()) == P("data", None)
    # a parameter that loses a mesh axis says so (activations and batches do not: warn=False is the default)
    with pytest.warns(UserWarning, match=r"mesh axis 'tensor' \(2 devices\) does not divide dimension 0 \(49153\)"):
        assert shd.logical_to_spec(("vocab", "embed"), (49153, 64), FakeMesh(), warn=True) == P(None, "fsdp")


def test_mesh_shape_errors():
    with pytest.raises(ValueError, match="needs 8 devices but 1"):
        shd.make_mesh((2, 2, 2))
    with pytest.raises(ValueError, match="3 entries"):
        shd.make_mesh((1, 1))
    assert shd.make_mesh((1, -1, 1)).shape["fsdp"] == 1


@pytest.mark.multidevice
def test_sharded_decoder_equals_single_device():
    assert "OK" in run_multidevice("tests.multidevice.decoder_sharded")


@pytest.mark.multidevice
def test_sharded_shine_equals_single_device():
    assert "OK" in run_multidevice("tests.multidevice.shine_sharded")


@pytest.mark.multidevice
def test_sharded_train_step_equals_single_device():
    assert "OK" in run_multidevice("tests.multidevice.train_step_sharded")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_processes_equal_one_process():
    """2 processes x 2 CPU devices (jax.distributed on localhost, gloo collectives, data sharded by process)
    give the same loss and parameters after two training steps as 1 process x 4 devices."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    module = "tests.multidevice.multihost_step"
    port = str(_free_port())
    workers = [subprocess.Popen([sys.executable, "-m", module, "worker", port, str(i)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    single = subprocess.run([sys.executable, "-m", module, "single"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    outs = [w.communicate(timeout=600) for w in workers]
    assert single.returncode == 0, single.stderr[-3000:]
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]

    def result(text):
        loss, checksum = next(l for l in text.splitlines() if l.startswith("RESULT")).split()[1:]
        return float(loss), float(checksum)

    ref = result(single.stdout)
    for out, _ in outs:
        loss, checksum = result(out)
        assert loss == pytest.approx(ref[0], rel=1e-5) and checksum == pytest.approx(ref[1], rel=1e-5)


@pytest.mark.multidevice
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SHINE_JAX_MULTIHOST_STAGES"),
                    reason="opt-in (SHINE_JAX_MULTIHOST_STAGES=1): 2 processes x 3 stages take 1.5-3 min, more than "
                           "the 10-minute suite has left")
def test_two_processes_run_stages_through_final(tmp_path):
    """2 processes x 2 CPU devices, each host in its own workdir, run base_pretrain then pretrain (which starts
    from that host's base_pretrain/final) to completion: every host gets the same complete final/ folders, holding
    the trained parameters (those of the last checkpoint); a folder on a path both processes see is written once;
    a model folder saved by one process (here, this one) loads in the 2-process job. Then the faults: a damaged
    newest checkpoint in the shared directory (both fall back to the previous step) and a SIGTERM to one process
    (both stop at one step with its checkpoint); each resumed run ends with the parameters of an undamaged one."""
    from shine_jax.base_model import BaseModel
    from shine_jax.train.config import model_config
    from tests.train_utils import small_config

    BaseModel.random(model_config(small_config("base_pretrain"), 96), seed=1).save(tmp_path / "one_host")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    module = "tests.multidevice.multihost_stage"
    port = str(_free_port())
    workers = [subprocess.Popen([sys.executable, "-m", module, "worker", port, str(i), str(tmp_path)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [w.communicate(timeout=600) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (_, err) in zip(workers, outs):
        assert w.returncode == 0, err[-3000:]
    host0, host1 = (dict(l.split(maxsplit=2)[1:3] for l in out.splitlines() if l.startswith("RESULT "))
                    for out, _ in outs)
    assert host0["base_pretrain"] == host1["base_pretrain"] == host0["shared"] == host1["shared"]
    assert host0["pretrain"] == host1["pretrain"]
    assert (host0["first_own"], host1["first_own"]) == ("True", "True")
    assert (host0["first_shared"], host1["first_shared"]) == ("True", "False")
    # the damaged newest checkpoint: set aside once (process 0 renamed it), both resumed at step 4, same result
    for host in (host0, host1):
        assert (host["fallback_warnings"], host["fallback_resumed"], host["fallback_same"]) == ("1 True", "4", "True")
        assert host["fallback_steps"] == ".unreadable-6,4,6", host["fallback_steps"]
    # SIGTERM to process 1 after step 1: both stopped at the one sync step, saved it, resumed there, same result
    assert host0["preemption_stopped"] == host1["preemption_stopped"], (host0, host1)
    stop = host0["preemption_stopped"].split()
    assert stop[0] in ("1", "2", "3", "4", "5"), stop
    assert max(map(int, stop[1].split(","))) == int(stop[0]), stop  # its checkpoint is the newest
    for host in (host0, host1):
        assert (host["preemption_resumed"], host["preemption_same"]) == (stop[0], "True")
    # nothing left beside the folders: no markers, no temporary folders or files
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["model"]
    for host in ("host0", "host1"):
        for stage in ("base_pretrain", "pretrain"):
            assert not [p.name for p in (tmp_path / host / stage).iterdir() if p.name.startswith(".")]
            assert (tmp_path / host / stage / "final").is_dir()
    check = subprocess.run([sys.executable, "-m", module, "check", str(tmp_path)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "OK" in check.stdout, check.stderr[-3000:]
    one_host = next(l.split()[2] for l in check.stdout.splitlines() if l.startswith("RESULT one_host "))
    assert host0["one_host"] == host1["one_host"] == one_host


def test_unreachable_coordinator_times_out_with_a_clear_message():
    code = ("from shine_jax import distributed\n"
            "try:\n    distributed.initialize('localhost:1', 2, 1, timeout_s=3)\n"
            "except ConnectionError as e:\n    print('CAUGHT', e)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "CAUGHT could not join the job at coordinator localhost:1 within 3s" in proc.stdout, proc.stderr[-2000:]
