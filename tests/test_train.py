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
from tests.conftest import REPO, STAGES, STEPS

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
    assert list((trained_workdir / stage / "tensorboard").iterdir()), "no TensorBoard event file"
    traces = list((trained_workdir / stage / "tensorboard" / "plugins" / "profile").rglob("*.xplane.pb"))
    assert bool(traces) == (stage == "pretrain"), "profile_steps='2,3' traces the pretrain stage only"


def _train_cli(workdir, stage, steps, extra=(), env=None):
    from tests.train_utils import SMALL

    args = [sys.executable, "-m", "shine_jax.cli", "train", "--config", f"{REPO}/configs/tiny.py:{stage}",
            "--workdir", str(workdir), "--no-progress"]
    args += [f"--config.{o}" for o in SMALL + RESUME + [f"steps={steps}", *extra]]
    return subprocess.run(args, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_three_faults_in_a_row_then_the_same_run(trained_workdir, tmp_path):
    """ift_1qa for 10 steps (checkpoints every 4), interrupted three times in a row: SIGKILL after step 6 (the last
    checkpoint is step 4), SIGTERM after step 7 (a preemption: it saves step 7 and exits 143 with one line), SIGKILL
    after step 9 (last checkpoint 8), then the same command once more: the losses and the final parameters equal an
    uninterrupted run's, bit for bit."""
    import shutil

    import jax

    from shine_jax.shine import Shine
    from tests.train_utils import SMALL

    extra = [f"data.dir='{trained_workdir / 'data'}'"]
    runs = {name: tmp_path / name for name in ("straight", "faulted")}
    for wd in runs.values():
        shutil.copytree(trained_workdir / "ift_mqa" / "final", wd / "ift_mqa" / "final")
    run_stage(load_config(f"{REPO}/configs/tiny.py:ift_1qa", SMALL + RESUME + extra), runs["straight"], progress=False)

    wd = runs["faulted"]
    for env, status, last_step in (({KILL_ENV: "6"}, -9, 6), ({TERM_ENV: "7"}, 143, 7), ({KILL_ENV: "9"}, -9, 9)):
        proc = _train_cli(wd, "ift_1qa", 10, extra, env=env)
        assert proc.returncode == status, proc.stderr[-2000:]
        assert max(r["step"] for r in read_metrics(wd / "ift_1qa" / "metrics.jsonl")) == last_step
        if status == 143:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "stopped by SIGTERM after step 7: checkpoint of step 7 saved" in errors[0]
        assert not (wd / "ift_1qa" / "final").exists()
    proc = _train_cli(wd, "ift_1qa", 10, extra)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = read_metrics(runs["straight"] / "ift_1qa" / "metrics.jsonl")
    b = read_metrics(wd / "ift_1qa" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(0, 11))
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
    assert a[0]["val_loss"] == b[0]["val_loss"] and a[-1]["val_loss"] == b[-1]["val_loss"]
    assert json.loads((wd / "ift_1qa" / "summary.json").read_text())["resumed_from"] == 8
    pa = Shine.load(runs["straight"] / "ift_1qa" / "final").hyper_params()
    pb = Shine.load(wd / "ift_1qa" / "final").hyper_params()
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_workdir_of_another_model_is_refused(trained_workdir, tmp_path):
    import shutil

    wd = tmp_path / "wd"
    shutil.copytree(trained_workdir / "ift_mqa", wd / "ift_mqa")
    shutil.copytree(trained_workdir / "pretrain" / "final", wd / "pretrain" / "final")
    proc = _train_cli(wd, "ift_mqa", 4, [f"data.dir='{trained_workdir / 'data'}'", "shine.m2p_layers=4"])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "different model" in last


@pytest.mark.slow
def test_unreadable_newest_checkpoint_falls_back_to_the_previous_step(trained_workdir, tmp_path):
    """The newest step of a finished stage loses its state (every file truncated): rerunning warns once, sets the
    step aside (kept, renamed), resumes from the previous step and ends with the same losses; when no step restores
    (state folders deleted), one error says so."""
    import shutil

    from shine_jax.train.checkpoint import CheckpointError
    from tests.train_utils import SMALL

    wd = tmp_path / "wd"
    shutil.copytree(trained_workdir / "ift_mqa" / "final", wd / "ift_mqa" / "final")
    overrides = SMALL + RESUME + [f"data.dir='{trained_workdir / 'data'}'", "steps=8"]
    cfg = load_config(f"{REPO}/configs/tiny.py:ift_1qa", overrides)
    run_stage(cfg, wd, progress=False)
    first = read_metrics(wd / "ift_1qa" / "metrics.jsonl")
    ckpts = wd / "ift_1qa" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["4", "8"]

    for f in (ckpts / "8" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.warns(UserWarning, match=r"checkpoint step 8 .* set aside as \.unreadable-8"):
        summary = run_stage(cfg, wd, progress=False)
    assert summary["resumed_from"] == 4
    assert (ckpts / ".unreadable-8" / "state").is_dir()  # kept for inspection, never deleted
    again = read_metrics(wd / "ift_1qa" / "metrics.jsonl")  # steps 5-8 again, the same losses
    assert [(r["step"], r.get("loss"), r.get("val_loss")) for r in again] == \
        [(r["step"], r.get("loss"), r.get("val_loss")) for r in first]

    for step in (4, 8):  # the rerun saved a new step 8: now every kept step loses its state
        shutil.rmtree(ckpts / str(step) / "state")
    with pytest.raises(CheckpointError, match="no checkpoint .* can be restored"), pytest.warns(UserWarning):
        run_stage(cfg, wd, progress=False)
    assert {".unreadable-4", ".unreadable-8.1"} <= {p.name for p in ckpts.iterdir()}


@pytest.mark.slow
def test_diverged_stage_is_one_error_and_writes_no_final(trained_workdir, tmp_path):
    import shutil

    from shine_jax.train.config import ConfigError
    from tests.train_utils import SMALL

    wd = tmp_path / "wd"
    shutil.copytree(trained_workdir / "ift_mqa" / "final", wd / "ift_mqa" / "final")
    cfg = load_config(f"{REPO}/configs/tiny.py:ift_1qa", SMALL + RESUME + [
        f"data.dir='{trained_workdir / 'data'}'", "steps=2", "optim.lr=1e39"])
    with pytest.raises(ConfigError, match=r"^stage ift_1qa diverged: validation loss (nan|inf) at step 2 "):
        run_stage(cfg, wd, progress=False)  # a ConfigError is one `error:` line on the command line
    assert not (wd / "ift_1qa" / "final").exists()
