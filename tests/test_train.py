"""Training end to end on a small tiny-family model: every stage lowers its loss; a killed run resumes exactly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shine_jax.train.config import load_config
from shine_jax.train.loop import KILL_ENV, TERM_ENV, run_stage
from shine_jax.train.metrics import read_metrics
from tests.conftest import REPO, STAGES, STEPS, WANDB
from tests.train_utils import SMALL

RESUME = ["steps=10", "checkpoint_every=4", "optim.warmup_steps=2", "log_every=1", "eval_every=100"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lowers_the_loss(trained_workdir, stage):
    rows = read_metrics(trained_workdir / stage / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(0, STEPS[stage] + 1, 5))
    summary = json.loads((trained_workdir / stage / "summary.json").read_text())
    first, last = summary["initial_val_loss"], summary["val_loss"]
    assert rows[0]["val_loss"] == first and rows[-1]["val_loss"] == last
    assert last < first, f"{stage}: validation loss {first:.4f} -> {last:.4f}"
    rows = rows[1:]
    for key in ("loss", "lr", "tokens_per_s", "model_flops_per_s", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert summary["skipped_steps"] == 0 and np.isfinite(summary["val_loss"])
    assert (trained_workdir / stage / "final").is_dir()
    logs = "wandb" if stage == "ift_mqa" and WANDB else "tensorboard"  # the fixture's W&B stage
    assert list((trained_workdir / stage / logs).iterdir()), f"no {logs} records"
    traces = list((trained_workdir / stage / "tensorboard" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert bool(traces) == (stage == "ift_1qa"), "profile_steps='2,3' traces the ift_1qa stage only"


# The command line in a process where TensorFlow and torch look absent (as in the plain install, whatever this
# environment holds): each import finder is wrapped to find neither.
WITHOUT_TF_AND_TORCH = """
import sys


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "torch"):
            return None
        return self.finder.find_spec(name, path, target)


sys.meta_path[:] = [Hiding(f) for f in sys.meta_path]
from shine_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _train_cli(workdir, stage, overrides, env=None, without_tf_and_torch=False):
    entry = ["-c", WITHOUT_TF_AND_TORCH] if without_tf_and_torch else ["-m", "shine_jax.cli"]
    args = [sys.executable, *entry, "train", "--config", f"{REPO}/configs/tiny.py:{stage}",
            "--workdir", str(workdir), "--no-progress", *(f"--config.{o}" for o in overrides)]
    return subprocess.run(args, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=600)


# The fault tests run the fixture's first stage again (base_pretrain: 30 steps, checkpoints every 10, the last two
# kept): the cheapest stage to start, and its checkpointing, resume and preemption code is every stage's.
@pytest.mark.slow
@pytest.mark.faults
def test_three_faults_in_a_row_then_the_same_run(base_workdir, tmp_path):
    """The fixture's base_pretrain stage run again from the command line, with its checkpoints kept outside the
    workdir (``checkpoint_dir``, as a pod keeps them in a bucket) and interrupted three times in a row: SIGKILL at a
    random step after the checkpoint of step 10, SIGTERM after step 25 (a preemption: it saves step 25 and exits 143
    with one line), SIGKILL at a random later step; then the same command once more, in a process where TensorFlow
    and torch cannot be imported (the training path needs neither). The logged losses and the final parameters equal
    the fixture's uninterrupted run, bit for bit. (The preemption falls on a logging step: a logged loss is the mean
    over the steps since the last log, and that window is not part of a checkpoint.)"""
    import random

    import jax

    from shine_jax.base_model import BaseModel
    from tests.conftest import trained_workdir_extra
    from tests.train_utils import small_overrides

    rng = random.Random(20)
    kill_1, kill_2 = rng.randint(11, 19), rng.randint(26, 29)
    wd, bucket = tmp_path / "wd", tmp_path / "bucket"
    stage = "base_pretrain"
    overrides = [*small_overrides(STEPS[stage], trained_workdir_extra(stage, base_workdir), base_workdir / "data"),
                 f"checkpoint_dir='{bucket}'"]
    steps_kept = []
    for env, status, kept in (({KILL_ENV: str(kill_1)}, -9, [10]), ({TERM_ENV: "25"}, 143, [20, 25]),
                              ({KILL_ENV: str(kill_2)}, -9, [20, 25])):
        proc = _train_cli(wd, stage, overrides, env=env)
        assert proc.returncode == status, proc.stderr[-2000:]
        steps_kept.append(sorted(int(p.name) for p in (bucket / stage).iterdir() if p.name.isdigit()))
        if status == 143:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "stopped by SIGTERM after step 25: checkpoint of step 25 saved" in errors[0]
        assert not (wd / stage / "final").exists()
        assert steps_kept[-1] == kept, (kill_1, kill_2, steps_kept)
    proc = _train_cli(wd, stage, overrides, without_tf_and_torch=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (wd / stage / "checkpoints").exists(), "checkpoints written into the workdir"
    assert list((wd / stage / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"

    a = read_metrics(base_workdir / stage / "metrics.jsonl")
    b = read_metrics(wd / stage / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(0, 31, 5))
    assert [(r.get("loss"), r.get("val_loss")) for r in a] == [(r.get("loss"), r.get("val_loss")) for r in b]
    assert json.loads((wd / stage / "summary.json").read_text())["resumed_from"] == 25
    pa = BaseModel.load(base_workdir / stage / "final").params()
    pb = BaseModel.load(wd / stage / "final").params()
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.faults
def test_workdir_of_another_model_is_refused(base_workdir, tmp_path, capsys):
    import shutil

    from shine_jax import cli

    wd = tmp_path / "wd"
    shutil.copytree(base_workdir / "base_pretrain" / "checkpoints", wd / "base_pretrain" / "checkpoints")
    overrides = SMALL + RESUME + ["steps=4", f"data.dir='{base_workdir / 'data'}'", "model.num_layers=3"]
    assert cli.main(["train", "--config", f"{REPO}/configs/tiny.py:base_pretrain", "--workdir", str(wd),
                     "--no-progress", *(f"--config.{o}" for o in overrides)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "different model" in last


@pytest.mark.slow
@pytest.mark.faults
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_step(base_workdir, tmp_path):
    """The newest step of the fixture's finished base_pretrain stage loses its state (every file truncated):
    rerunning warns once, sets the step aside (kept, renamed), resumes from the previous step and ends with the same
    losses; when no step restores (state folders deleted), one error says so."""
    import shutil

    from shine_jax.train.checkpoint import CheckpointError
    from tests.conftest import trained_workdir_extra
    from tests.train_utils import small_config

    stage = "base_pretrain"
    wd = tmp_path / "wd"
    shutil.copytree(base_workdir / stage, wd / stage)
    shutil.rmtree(wd / stage / "final")
    cfg = small_config(stage, STEPS[stage], trained_workdir_extra(stage, base_workdir), base_workdir / "data")
    first = read_metrics(wd / stage / "metrics.jsonl")
    ckpts = wd / stage / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["20", "30"]

    for f in (ckpts / "30" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.warns(UserWarning, match=r"checkpoint step 30 .* set aside as \.unreadable-30"):
        summary = run_stage(cfg, wd, progress=False)
    assert summary["resumed_from"] == 20
    assert (ckpts / ".unreadable-30" / "state").is_dir()  # kept for inspection, never deleted
    again = read_metrics(wd / stage / "metrics.jsonl")  # steps 21-30 again, the same losses
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in again] == \
        [(r["step"], r.get("loss"), r.get("val_loss")) for r in first]

    for step in (20, 30):  # the rerun saved a new step 30: now every kept step loses its state
        shutil.rmtree(ckpts / str(step) / "state")
    with pytest.raises(CheckpointError, match="no checkpoint .* can be restored"), pytest.warns(UserWarning):
        run_stage(cfg, wd, progress=False)
    assert {".unreadable-20", ".unreadable-30.1"} <= {p.name for p in ckpts.iterdir()}


@pytest.mark.slow
@pytest.mark.faults
def test_diverged_stage_is_one_error_and_writes_no_final(base_workdir, tmp_path):
    from shine_jax.train.config import ConfigError

    wd = tmp_path / "wd"
    cfg = load_config(f"{REPO}/configs/tiny.py:base_pretrain", SMALL + RESUME + [
        f"data.dir='{base_workdir / 'data'}'", "steps=2", "optim.lr=1e39"])
    with pytest.raises(ConfigError, match=r"^stage base_pretrain diverged: validation loss (nan|inf) at step 2 "):
        run_stage(cfg, wd, progress=False)  # a ConfigError is one `error:` line on the command line
    assert not (wd / "base_pretrain" / "final").exists()
