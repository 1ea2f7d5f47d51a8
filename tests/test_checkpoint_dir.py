"""``checkpoint_dir``: a stage's Orbax checkpoints kept outside the workdir (a local path here; gs:// on a pod).

Saving there and resuming from there, exactly, is tested by test_train's three-faults run, which keeps its
checkpoints outside its workdir."""

import pytest

from shine_jax.train.config import ConfigError, checkpoint_dir_problem, load_config
from tests.conftest import REPO


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
