"""The package as a wheel: built from this checkout, installed into a new virtual environment (its dependencies
borrowed from the test environment, never the checkout's sources), it runs ``shine-jax demo --help`` and trains a
stage from a config shipped inside it, from a folder that is not the checkout."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.conftest import REPO
from tests.train_utils import SMALL

pytestmark = pytest.mark.slow


def run(argv, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{argv[:4]}: {proc.stderr[-3000:]}"
    return proc


def test_the_wheel_runs_a_packaged_config_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)])
    (wheel,) = dist.glob("shine_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"shine_jax/configs/tiny.py", "shine_jax/configs/sweeps/tiny_cpu.py",
            "shine_jax/assets/tiny_base/model.safetensors", "shine_jax/assets/tiny_base/tokenizer.json"} <= names
    assert not any(n.startswith(("tests/", "experiments/", "benchmarks/")) for n in names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # the dependencies: the test environment's packages, as a plain path (its .pth files, the checkout's editable
    # install among them, are not read from there)
    pathlib.Path(site, "test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = run([str(py), "-c", "import shine_jax; print(shine_jax.__file__)"], cwd=outside, env=env).stdout
    assert where.startswith(site), where  # the installed copy, not the checkout
    # the packaged config finds the packaged base
    base = run([str(py), "-c", "from shine_jax.train.config import load_config; "
                "print(load_config('tiny:pretrain').model.hf_dir)"], cwd=outside, env=env).stdout.strip()
    assert base.startswith(site) and pathlib.Path(base, "model.safetensors").is_file(), base
    shine_jax = venv / "bin" / "shine-jax"
    assert "--workdir" in run([str(shine_jax), "demo", "--help"], cwd=outside, env=env).stdout
    overrides = [f"--config.{o}" for o in SMALL + ["steps=2", "log_every=1", "eval_every=2", "optim.warmup_steps=1"]]
    done = run([str(shine_jax), "train", "--config", "tiny:base_pretrain", "--workdir", "w", "--no-progress",
                *overrides], cwd=outside, env=env).stdout
    assert "stage base_pretrain done: 2 steps" in done, done
    assert (outside / "w" / "base_pretrain" / "final").is_dir()
