"""Sharding rules and the 8-fake-device equality checks (each multi-device check runs in its own process)."""

import os
import subprocess
import sys

import numpy as np
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
