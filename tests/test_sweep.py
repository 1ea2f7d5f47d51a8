"""Scaling sweeps: the runner (a micro sweep of real child processes), its errors, the sweep files, the fit."""

from __future__ import annotations

import ast
import csv
import itertools
import json
import sys

import numpy as np
import pytest

from shine_jax import cli
from shine_jax import sweep as sweep_lib
from tests.conftest import REPO
from tests.train_utils import SMALL

SMALL_DICT = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in SMALL)}

MICRO = '''
import ml_collections

SMALL = {small!r}
def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "micro"
    c.stages = ("pretrain",)
    train = {{"steps": 6, "log_every": 2, "eval_every": 6, "checkpoint_every": 6, "optim.warmup_steps": 1}}
    point = {{"steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 4, "optim.warmup_steps": 1}}
    c.bases = [dict(name="small", config={tiny!r}, stages=("base_pretrain",), overrides=SMALL, train=train),
               # an FFN of 100 makes r*sum(in+out)/H = 2008/64 memory tokens for r=2: not an integer
               dict(name="odd", config={tiny!r}, stages=("base_pretrain",),
                    overrides={{**SMALL, "model.intermediate_size": 100}}, train=train)]
    c.points = [dict(name="odd_r2", base="odd", overrides={{"shine.lora_rank": 2, **point}}),
                dict(name="small_r2", base="small", overrides={{"shine.lora_rank": 2, **point}})]
    {extra}
    return c
'''


def write_sweep(tmp_path, extra: str = "", name: str = "micro.py"):
    path = tmp_path / name
    path.write_text(MICRO.format(small=SMALL_DICT, tiny=str(REPO / "configs" / "tiny.py"), extra=extra))
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_micro_sweep_records_skips_and_survives_a_bad_point(tmp_path, monkeypatch, capsys):
    spec = str(write_sweep(tmp_path))
    wd = tmp_path / "sweep"
    logs = []
    rows = sweep_lib.run_sweep(spec, wd, log=logs.append)
    assert [r["status"] for r in rows] == ["failed", "finished"], logs
    # live progress from the children's metrics while they train: every logged row once, with the stage's length
    live = [line for line in logs if line.startswith("[sweep] point small_r2 pretrain: step ")]
    assert [line.split()[5] for line in live] == ["0/4", "2/4", "4/4"], logs
    table = read_csv(wd / "results.csv")
    for col in ("params_base", "params_m2p", "params_metalora", "params_mem_tokens", "params_lora", "memory_tokens",
                "pretrain_flops_per_step", "pretrain_step_s", "pretrain_peak_rss_mib", "pretrain_val_loss_initial",
                "pretrain_val_loss", "pretrain_val_ppl", "base_pretrain_val_loss", "base_pretrain_step_s", "error"):
        assert col in table["small_r2"], col
    a = table["small_r2"]
    assert float(a["pretrain_val_loss"]) > 0 and float(a["pretrain_step_s"]) > 0
    assert float(a["pretrain_peak_rss_mib"]) > 50 and float(a["pretrain_flops_per_step"]) > 0
    assert float(a["base_pretrain_val_loss"]) < float(a["base_pretrain_val_loss_initial"])
    assert int(a["memory_tokens"]) == 34 and int(a["params_lora"]) == 2 * 2 * 17 * 64  # M = 17 r for this shape
    assert (wd / "points" / "small_r2" / "base_pretrain").is_symlink()  # the base is trained once per base
    assert not (wd / "bases" / "odd").exists()  # the bad point failed before its base was trained
    bad = table["odd_r2"]
    assert bad["status"] == "failed" and "is not an integer" in bad["error"] and "\n" not in bad["error"]
    md = (wd / "results.md").read_text()
    assert "| small_r2 | finished |" in md and "odd_r2** failed" in md

    def no_child(*args, **kwargs):
        raise AssertionError("a finished point was run again")

    monkeypatch.setattr(sweep_lib, "run_child", no_child)
    logs.clear()
    rows = sweep_lib.run_sweep(spec, wd, log=logs.append)
    assert sum("finished earlier, skipped" in line for line in logs) == 1
    assert [r["status"] for r in rows] == ["failed", "finished"]
    # the command line's --fit after the (skipped) points: one finished point has no axis to fit, one error line
    assert cli.main(["sweep", "--config", spec, "--workdir", str(wd), "--fit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no axis of lora_rank, m2p_layers, metalora_rank, params_base takes two values in "
                   f"{wd / 'results.csv'}: nothing to fit"], err


def test_cli_errors_are_one_line(tmp_path, capsys):
    spec = write_sweep(tmp_path)
    cases = [
        (["--config", str(tmp_path / "nope.py")], "does not exist"),
        (["--config", str(spec), "--points", "small_r2,nope"], "has no point 'nope'"),
        (["--config", str(spec), "--point-index", "7"], "out of range"),
        (["--config", str(write_sweep(tmp_path, 'c.points.append(dict(name="x", base="huge"))', "b1.py"))],
         "names base 'huge'"),
        (["--config", str(write_sweep(tmp_path, 'c.points.append(dict(name="small_r2", base="small"))', "b2.py"))],
         "two points are named"),
        (["--config", str(write_sweep(tmp_path, 'c.points[0]["overrides"]["shine.nope"] = 1', "b3.py"))],
         "unknown config field 'shine.nope'"),
        (["--config", str(write_sweep(tmp_path, 'c.points[0]["overrides"]["steps"] = "many"', "b4.py"))],
         "expects int"),
    ]
    for args, message in cases:
        assert cli.main(["sweep", *args, "--workdir", str(tmp_path / "w")]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err, (args, err)
    assert not (tmp_path / "w").exists()


def test_sweep_files_dry_run(capsys):
    rows = sweep_lib.run_sweep(str(REPO / "configs/sweeps/tiny_cpu.py"), "/tmp/unused", dry_run=True)
    assert len(rows) == 8 and not any("error" in r for r in rows)
    assert {(r["hidden_size"], r["lora_rank"], r["m2p_layers"]) for r in rows} == set(
        itertools.product((64, 128), (2, 8), (2, 6)))
    for axis, n in (("size", 3), ("rank", 4), ("depth", 4), ("metarank", 5), ("grid", 48), ("rank,size=8b", 4)):
        assert len(sweep_lib.load_sweep(f"{REPO}/configs/sweeps/qwen3_paper.py:{axis}").points) == n, axis
    rows = sweep_lib.run_sweep(str(REPO / "configs/sweeps/tiny_cpu_ift.py"), "/tmp/unused", dry_run=True)
    assert {(r["lora_rank"], r["m2p_layers"], r["memory_tokens"]) for r in rows} == {
        (2, 2, 34), (2, 6, 34), (8, 2, 136), (8, 6, 136)} and not any("error" in r for r in rows)
    ift = sweep_lib.load_sweep(f"{REPO}/configs/sweeps/tiny_cpu_ift.py:seeds=2")
    assert ift.stages == ("pretrain", "ift_mqa") and len(ift.points) == 8 and ift.eval["docs"] == 32
    rows = sweep_lib.run_sweep(f"{REPO}/configs/sweeps/qwen3_paper.py:size", "/tmp/unused", dry_run=True)
    assert [r["params_base"] > 5e8 for r in rows] == [True] * 3
    assert rows[0]["memory_tokens"] == 176 and rows[2]["memory_tokens"] == 148  # as `shine-jax plan` reports
    out = capsys.readouterr().out
    assert "mesh (1, 32, 1)" in out and "$ shine-jax train --config" in out


def test_select_points_shards():
    sweep = sweep_lib.load_sweep(str(REPO / "configs/sweeps/tiny_cpu.py"))
    names = [p.name for p in sweep.points]
    shards = [[p.name for p in sweep_lib.select_points(sweep, num_shards=3, shard_index=i)] for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(names) and shards[1] == names[1::3]
    assert [p.name for p in sweep_lib.select_points(sweep, point_index=5)] == [names[5]]
    assert [p.name for p in sweep_lib.select_points(sweep, names=f"{names[3]},{names[0]}")] == [names[3], names[0]]


def test_run_child_reports_the_written_error_and_peak_memory(tmp_path):
    result = tmp_path / "result.json"
    code = (f"import json, sys; x = bytearray(64 << 20); print('error: in the log only', file=sys.stderr); "
            f"open({str(result)!r}, 'w').write(json.dumps({{'error': 'boom here'}})); sys.exit(2)")
    out = sweep_lib.run_child([sys.executable, "-c", code], tmp_path / "child.log", {}, result)
    assert out["rc"] == 2 and out["error"] == "boom here" and out["peak_rss_mib"] > 64  # the file, not the log
    # a crash writes no result: the error says so and where the traceback is; a stale result is not read
    out = sweep_lib.run_child([sys.executable, "-c", "raise RuntimeError('kaput')"], tmp_path / "c2.log", {}, result)
    assert out["rc"] == 1 and out["error"].startswith("exit status 1;") and "c2.log" in out["error"]
    result.write_text('{"val_loss": 1.0}')
    out = sweep_lib.run_child([sys.executable, "-c", "pass"], tmp_path / "c3.log", {}, result)
    assert out["rc"] == 0 and out["summary"] == {}


def test_median_step_time_skips_the_compile_window():
    from shine_jax.train.loop import median_step_time

    assert median_step_time([10.0, 1.0, 0.5, 2.0]) == pytest.approx(1.0)  # median of 1, 0.5, 2
    assert median_step_time([10.0, 1.0, 3.0]) == pytest.approx(2.0)
    assert median_step_time([10.0]) is None



def test_fit_recovers_known_exponents(tmp_path, capsys):
    from shine_jax import scaling_fit

    rows = []
    for p, r, d in itertools.product((2e5, 8e5, 3.2e6), (2, 4, 8, 16), (2, 6)):
        loss = 3.0 * r ** -0.2 * d ** -0.05 * (p / 1e5) ** -0.1
        rows.append({"name": f"{p}_{r}_{d}", "status": "finished", "params_base": p, "lora_rank": r,
                     "m2p_layers": d, "pretrain_val_loss": loss})
    first = rows.pop(0)  # that setting measured twice (two seeds), symmetric around the law: same mean
    rows += [{**first, "name": n, "pretrain_val_loss": first["pretrain_val_loss"] + d} for n, d in (("s0", -0.01),
                                                                                                 ("s1", 0.01))]
    rows.append({"name": "broken", "status": "failed", "params_base": 1e5, "lora_rank": 2, "m2p_layers": 2,
                 "pretrain_val_loss": ""})
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    scaling_fit.fit_sweep(tmp_path / "results.csv", tmp_path / "fit")
    fits = {r["axis"]: r for r in scaling_fit.analyse(scaling_fit.read_rows(tmp_path / "results.csv",
                                                                            "pretrain_val_loss"))}
    assert fits["lora_rank"]["averaged"]["b"] == pytest.approx(0.2, abs=1e-9)
    assert fits["m2p_layers"]["averaged"]["b"] == pytest.approx(0.05, abs=1e-9)
    assert fits["params_base"]["averaged"]["b"] == pytest.approx(0.1, abs=1e-9)
    assert all(ln["fit"]["b"] == pytest.approx(0.2, abs=1e-9) for ln in fits["lora_rank"]["lines"])
    paired = fits["lora_rank"]["paired"]
    assert paired["pairs"] == 6 and paired["lower"] == 6 and paired["mean"] < 0
    spread = scaling_fit.replicate_spread(scaling_fit.read_rows(tmp_path / "results.csv", "pretrain_val_loss"))
    assert spread["settings"] == 1 and spread["pooled_std"] == pytest.approx(0.02 / 2 ** 0.5)
    assert (tmp_path / "fit.png").stat().st_size > 10_000
    assert "| LoRA rank r | averaged" in (tmp_path / "fit.md").read_text()
    # with an irreducible loss c, the offset fit finds it and the exponent
    x = np.array([2.0, 4, 8, 16, 32])
    f = scaling_fit.fit_power_law(x, 0.8 + 2.0 * x ** -0.5, offset=True)
    assert f["b"] == pytest.approx(0.5, abs=1e-4) and f["c"] == pytest.approx(0.8, abs=1e-4)
    assert json.dumps(f)


def test_fit_standard_errors_match_ordinary_least_squares():
    """Without an offset the fit is linear in (log a, b): its standard errors are the textbook OLS ones,
    sigma^2 (X^T X)^-1 with sigma^2 the residual variance on n - 2 degrees of freedom; two points give none."""
    from shine_jax import scaling_fit

    rng = np.random.default_rng(0)
    x = np.array([1.0, 2, 4, 8, 16, 32])
    y = 3.0 * x ** -0.3 * np.exp(rng.normal(0, 0.05, x.size))
    f = scaling_fit.fit_power_law(x, y)
    design = np.stack([np.ones_like(x), -np.log(x)], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.log(y), rcond=None)
    sigma2 = np.sum((design @ coef - np.log(y)) ** 2) / (x.size - 2)
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    assert f["b"] == pytest.approx(coef[1], rel=1e-6) and f["b_se"] == pytest.approx(se[1], rel=1e-4)
    assert f["a"] == pytest.approx(np.exp(coef[0]), rel=1e-6)
    assert f["a_se"] == pytest.approx(np.exp(coef[0]) * se[0], rel=1e-4)  # delta method from log a
    two = scaling_fit.fit_power_law(x[:2], y[:2])
    assert np.isnan(two["b_se"]) and two["b"] == pytest.approx(np.log(y[0] / y[1]) / np.log(2), rel=1e-6)


def test_fit_sweep_writes_its_table_and_refuses_a_table_without_an_axis(tmp_path, capsys):
    wd = tmp_path / "sweep"
    wd.mkdir()
    rows = [{"name": f"p{r}", "status": "finished", "lora_rank": r, "pretrain_val_loss": 2.0 * r ** -0.25}
            for r in (2, 4, 8)]
    with open(wd / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    from shine_jax.scaling_fit import fit_sweep

    fit_sweep(wd / "results.csv", wd / "fit")
    assert "b = 0.2500" in capsys.readouterr().out
    assert "| LoRA rank r | averaged over 1 settings | 0.2500" in (wd / "fit.md").read_text()
    (wd / "results.csv").write_text("name,status,pretrain_val_loss\nx,finished,1.0\n")
    with pytest.raises(ValueError, match="no axis of .* takes two values"):
        fit_sweep(wd / "results.csv", wd / "fit")
