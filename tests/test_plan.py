"""Compile-only planning: the frozen base's storage dtype reaches the plan, and a point that does not fit gets the
settings that make it fit."""

import jax
import pytest

from shine_jax.plan import format_suggestion, plan, suggest
from shine_jax.train.config import load_config
from tests.train_utils import REPO

MESH = (1, 1, 1)


@pytest.fixture(scope="module")
def tiny():
    if jax.device_count() != 1:
        pytest.skip("plans a one-device mesh")
    return load_config(f"{REPO}/configs/tiny.py:pretrain", ["model.vocab_size=512"])


def test_a_frozen_bfloat16_base_takes_half_the_bytes(tiny):
    f32 = plan(tiny, MESH)
    bf16_cfg = tiny.copy_and_resolve_references()
    bf16_cfg.model.frozen_param_dtype = "bfloat16"
    bf16 = plan(bf16_cfg, MESH)
    assert f32["params"]["base"] == bf16["params"]["base"] > 0
    # every frozen weight is an argument of the step: exactly 2 of its 4 bytes go
    saved = f32["per_device_bytes"]["arguments"] - bf16["per_device_bytes"]["arguments"]
    assert saved == 2 * f32["params"]["base"]


def test_a_point_that_does_not_fit_gets_settings_that_do(tiny):
    need = plan(tiny, MESH)["per_device_bytes"]["total"]
    hbm = int(need * 0.8)
    sug = suggest(tiny, MESH, hbm)
    assert sug["fits"] and sug["total"] <= hbm
    # cheapest first: the frozen base in bfloat16 (too little at this size), then more gradient accumulation
    assert sug["overrides"][0] == "--config.model.frozen_param_dtype=bfloat16"
    assert any(o.startswith("--config.grad_accum=") for o in sug["overrides"])
    assert format_suggestion(sug).startswith(f"  fits with {' '.join(sug['overrides'])}")
    # the suggestion is true: planned with it, the point fits
    cfg = load_config(f"{REPO}/configs/tiny.py:pretrain", ["model.vocab_size=512"] + [
        o.removeprefix("--config.") for o in sug["overrides"]])
    assert plan(cfg, MESH)["per_device_bytes"]["total"] <= hbm


def test_nothing_fits_is_said(tiny):
    cfg = tiny.copy_and_resolve_references()
    cfg.model.frozen_param_dtype, cfg.model.remat = "bfloat16", True
    cfg.grad_accum = cfg.batch_size  # nothing left to lower on one device
    sug = suggest(cfg, MESH, 1024)
    assert not sug["fits"] and sug["tried"] == 0
    assert "use more devices" in format_suggestion(sug)
