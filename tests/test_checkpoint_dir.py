"""``checkpoint_dir``: a stage's Orbax checkpoints kept outside the workdir (a local path here; gs:// on a pod)."""

import json
import shutil

import numpy as np
import pytest

from shine_jax.train.config import ConfigError, checkpoint_dir_problem, load_config
from tests.conftest import REPO


@pytest.mark.slow
def test_checkpoints_outside_the_workdir_save_and_resume_exactly(tmp_path):
    """base_pretrain for 6 steps with checkpoints every 2 in another folder; then the checkpoint of step 6 is
    removed (as if the process died before saving it) and the same run again resumes from step 4 in that folder
    and ends with the same parameters as the uninterrupted run."""
    import jax

    from shine_jax.model.base_model import BaseModel
    from shine_jax.train.checkpoint import resolve_dir
    from shine_jax.train.loop import checkpoint_dir_of, run_stage
    from shine_jax.train.metrics import read_metrics
    from tests.train_utils import small_config

    wd, ck = tmp_path / "wd", tmp_path / "bucket" / "run1"
    extra = [f"checkpoint_dir='{ck}'", "checkpoint_every=2", "keep_checkpoints=3", "log_every=1",
             "eval_every=100", "eval_batches=1"]
    cfg = small_config("base_pretrain", 6, extra, data_dir=tmp_path / "data")
    assert checkpoint_dir_of(cfg, wd / "base_pretrain") == resolve_dir(ck / "base_pretrain")

    first = run_stage(cfg, wd, progress=False)
    assert first["resumed_from"] == 0
    assert sorted(int(p.name) for p in (ck / "base_pretrain").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert not (wd / "base_pretrain" / "checkpoints").exists(), "checkpoints written into the workdir"
    reference = BaseModel.load(wd / "base_pretrain" / "final")
    ref_params = [np.asarray(x) for x in jax.tree.leaves(reference.params())]

    shutil.rmtree(ck / "base_pretrain" / "6")
    second = run_stage(cfg, wd, progress=False)
    assert second["resumed_from"] == 4
    assert json.loads((wd / "base_pretrain" / "summary.json").read_text())["resumed_from"] == 4
    assert [r["step"] for r in read_metrics(wd / "base_pretrain" / "metrics.jsonl")] == list(range(7))
    resumed = BaseModel.load(wd / "base_pretrain" / "final")
    for x, y in zip(ref_params, jax.tree.leaves(resumed.params())):
        np.testing.assert_array_equal(x, np.asarray(y))


@pytest.mark.parametrize("value", ["", "ckpts", "/abs/ckpts", "gs://my-bucket", "gs://my-bucket/runs/q8b",
                                   "gs://my.bucket_2/x/"])
def test_good_checkpoint_dirs(value):
    assert checkpoint_dir_problem(value) == ""


@pytest.mark.parametrize("value,words", [("gs:/my-bucket/x", "gs://BUCKET"), ("gs:my-bucket", "gs://BUCKET"),
                                         ("s3://b/x", "only gs://"), ("gcs://b/x", "only gs://"),
                                         ("gs://", "valid bucket"), ("gs://My_Bucket/x", "valid bucket"),
                                         ("gs:///x", "valid bucket"), (" gs://b/x", "whitespace")])
def test_bad_checkpoint_dir_is_one_clear_error(value, words):
    with pytest.raises(ConfigError) as e:
        load_config(f"{REPO}/configs/tiny.py:pretrain", [f"checkpoint_dir='{value}'"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config field 'checkpoint_dir'") and words in msg, msg


def test_bad_checkpoint_dir_on_the_command_line(tmp_path, capsys):
    from shine_jax import cli

    code = cli.main(["train", "--config", f"{REPO}/configs/tiny.py:pretrain", "--workdir", str(tmp_path),
                     "--config.checkpoint_dir=gs:/bucket/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: config field 'checkpoint_dir'"), err
