"""Trackers: TensorBoard event files written without TensorFlow hold the logged scalars and the stage's
hyperparameters; an offline W&B run records the same; a bad tracker name is one config error. (That a whole stage
runs where TensorFlow and torch cannot be imported: the last run of test_train's three-faults test.)"""

import json
import struct

import pytest

from shine_jax.train.config import ConfigError, load_config
from shine_jax.train.metrics import MetricsLog, flat_hparams, read_metrics
from tests.conftest import REPO


def read_events(directory):
    """Every Event in the TFRecord event files of ``directory`` (length, crc, payload, crc per record)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    return events


def scalars_of(events):
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if v.HasField("simple_value")}


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_logged_scalars_and_hparams(trained_workdir):
    stage = trained_workdir / "pretrain"
    events = read_events(stage / "tensorboard")
    logged = scalars_of(events)
    rows = read_metrics(stage / "metrics.jsonl")
    assert rows
    for row in rows:
        for key, value in row.items():
            if key != "step":
                assert logged[(key, row["step"])] == pytest.approx(value, rel=1e-6), (key, row["step"])
    plugin = [v for e in events for v in e.summary.value if v.metadata.plugin_data.plugin_name == "hparams"]
    assert plugin, "no HParams summary"
    blob = b"".join(v.metadata.plugin_data.content for v in plugin)
    assert b"optim.lr" in blob and b"shine.lora_rank" in blob


def test_metrics_log_writes_hparams_and_scalars(tmp_path):
    log = MetricsLog(tmp_path, tracker="tensorboard")
    log.hparams({"a": {"b": 1, "c": (1, 2)}, "d": None}, {"val_loss": 2.0})
    log.write(3, {"loss": 1.5})
    log.close()
    assert scalars_of(read_events(tmp_path / "tensorboard"))[("loss", 3)] == 1.5
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 1.5}
    assert flat_hparams({"a": {"b": 1, "c": (1, 2)}, "d": None}) == {"a.b": 1, "a.c": "(1, 2)", "d": "None"}


def test_tracker_none_writes_only_the_jsonl(tmp_path):
    log = MetricsLog(tmp_path, tracker="none")
    log.hparams({"a": 1})
    log.write(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "tensorboard").exists() and read_metrics(tmp_path / "metrics.jsonl")


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(ConfigError, match="'tracker'"):
        load_config(f"{REPO}/configs/tiny.py:pretrain", ["tracker=mlflow"])


def test_wandb_offline_run_records_config_and_scalars(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # in requirements-test.txt; the [wandb] extra elsewhere
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = MetricsLog(tmp_path, tracker="wandb", run_name="tiny:pretrain", project="shine_jax_test")
    log.hparams({"optim": {"lr": 0.001}})
    log.write(1, {"loss": 2.5})
    log.write(2, {"loss": 2.0})
    summary = dict(log.tracker.run.summary)
    assert summary["loss"] == 2.0 and summary["_step"] == 2  # both steps committed as they were logged
    run_dir = log.tracker.run.dir
    log.close()
    assert wandb.run is None
    offline = list(tmp_path.glob("wandb/offline-run-*"))
    assert len(offline) == 1, list(tmp_path.rglob("*"))[:20]
    assert str(offline[0]) in run_dir
    # the run's record log (what `wandb sync` uploads): protobuf records, their values JSON-encoded
    (records,) = offline[0].glob("run-*.wandb")
    data = records.read_bytes()
    assert b"optim.lr" in data and b"0.001" in data


def test_a_stage_logs_to_an_offline_wandb_run(trained_workdir):
    """The trained fixture's multi-QA stage ran with --config.tracker=wandb: its offline run, in the stage folder,
    holds the stage config and the logged scalars, the last validation loss among them."""
    pytest.importorskip("wandb")
    stage = trained_workdir / "ift_mqa"
    offline = list(stage.glob("wandb/offline-run-*"))
    assert len(offline) == 1, list(stage.iterdir())
    (records,) = offline[0].glob("run-*.wandb")
    data = records.read_bytes()
    assert b"shine.lora_rank" in data and b"val_loss" in data and b"grad_norm" in data
    assert not (stage / "tensorboard").exists()  # the tracker replaces TensorBoard's writer
