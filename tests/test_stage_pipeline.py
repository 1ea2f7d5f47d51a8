"""train.pipeline: the one reuse rule of the demo and the sweep (same settings: reuse; other settings: refuse;
unfinished: train), in order, with the caller's way of training."""

import json

import pytest

from shine_jax.train.config import load_config, settings_hash, trained_settings
from shine_jax.train.pipeline import StageConflict, run_pipeline
from tests.conftest import REPO

TINY = f"{REPO}/configs/tiny.py"


def finish(stage_dir, cfg):
    (stage_dir / "final").mkdir(parents=True)
    (stage_dir / "summary.json").write_text(json.dumps({"settings_hash": settings_hash(cfg),
                                                        "settings": trained_settings(cfg)}))


def test_reuse_train_and_refuse_in_order(tmp_path):
    configs = {stage: load_config(f"{TINY}:{stage}") for stage in ("pretrain", "ift_mqa", "ift_1qa")}
    finish(tmp_path / "pretrain", configs["pretrain"])
    (tmp_path / "ift_mqa").mkdir()  # started, not finished: trained (resumed) again
    calls, lines = [], []

    def train(stage, cfg):
        calls.append(("train", stage))
        finish(tmp_path / stage, cfg)
        return {"wall_s": 1.0}

    out = run_pipeline(configs, tmp_path, train, lambda stage, cfg: calls.append(("reuse", stage)) or "old",
                       log=lines.append)
    assert calls == [("reuse", "pretrain"), ("train", "ift_mqa"), ("train", "ift_1qa")]
    assert out == {"pretrain": "old", "ift_mqa": {"wall_s": 1.0}, "ift_1qa": {"wall_s": 1.0}}
    assert lines[0].startswith("pretrain: already trained with these settings") and lines[1] == \
        f"training stage ift_mqa ({configs['ift_mqa'].steps} steps)"
    # everything finished now: a second run trains nothing
    calls.clear()
    run_pipeline(configs, tmp_path, train, log=lines.append)
    assert calls == []
    # a finished stage asked for with other settings is refused before anything after it runs
    configs["ift_mqa"].steps += 1
    with pytest.raises(StageConflict, match=r"ift_mqa/final was trained with other settings \(steps: .*delete"):
        run_pipeline(configs, tmp_path, train, log=lines.append)
    assert calls == []


def test_a_scratch_shine_stage_without_its_base_is_one_error(tmp_path):
    """A SHINE stage on a scratch base reads the base stage's final/ (the stage table's base stage)."""
    from shine_jax.train import loop
    from shine_jax.train.config import ConfigError

    cfg = load_config(f"{TINY}:pretrain", ["model.source=scratch"])
    with pytest.raises(ConfigError, match=r"needs .*base_pretrain/final; run stage base_pretrain first"):
        loop.load_base(cfg, tmp_path)
