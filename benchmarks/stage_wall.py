"""Wall time of whole training stages run as commands, for several checkouts side by side (runs alternate).

    .venv/bin/python benchmarks/stage_wall.py --checkout /tmp/old --checkout . [--runs 3] [--stages base_pretrain,pretrain]

A step benchmark (``train_step_speed.py``) times the jitted step alone; this one times what a user waits for: the
command, from start-up to ``final/`` (imports, building the model, tracing and compiling, the data pipeline, the
steps with their logging, validation and checkpoints). Each run is ``shine-jax train`` of the tests' small stage
(``tests/train_utils.SMALL``: a 2-layer d=64 base; ``base_pretrain`` 30 steps, ``pretrain`` 20, checkpoints every
10) in a fresh workdir, with the checkout's code (``PYTHONPATH``) and this interpreter, no persistent compilation
cache. The data and a base for ``pretrain`` are made once beforehand, untimed. Prints each run's wall time and the
stage's median logged step time (``summary.json``'s ``step_s``), then the medians per checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.train_utils import small_overrides  # noqa: E402  (the tests' small shapes, one definition)

STEPS = {"base_pretrain": 30, "pretrain": 20}
QUIET = ["log_every=5", "eval_every=10", "eval_batches=1"]


def train(checkout: pathlib.Path, stage: str, workdir: pathlib.Path, data: pathlib.Path) -> float:
    """One ``train`` command of ``stage`` with ``checkout``'s code; returns its wall seconds."""
    args = [sys.executable, "-m", "shine_jax.cli", "train", "--config", f"{checkout}/configs/tiny.py:{stage}",
            "--workdir", str(workdir), "--no-progress",
            *(f"--config.{o}" for o in small_overrides(STEPS[stage], QUIET, data))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["PYTHONPATH"] = str(checkout)
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"error: {stage} failed in {checkout}:\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", action="append", required=True, type=pathlib.Path,
                    help="a checkout of shine_jax (repeat it; the runs alternate between them)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stages", default="base_pretrain,pretrain")
    a = ap.parse_args()
    checkouts = [c.resolve() for c in a.checkout]
    for c in checkouts:
        if not (c / "shine_jax" / "cli.py").is_file():
            raise SystemExit(f"error: --checkout {c} is not a shine_jax checkout (no shine_jax/cli.py)")
    stages = [s for s in a.stages.split(",") if s]
    if unknown := [s for s in stages if s not in STEPS]:
        raise SystemExit(f"error: --stages {','.join(unknown)}: choose from {','.join(STEPS)}")
    root = pathlib.Path(tempfile.mkdtemp(prefix="stage_wall_"))
    try:
        prep, data = root / "prep", root / "data"
        train(checkouts[-1], "base_pretrain", prep, data)  # builds the data; its base feeds `pretrain`
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for r in range(a.runs):
            for stage in stages:
                for c in checkouts:
                    wd = root / f"run{r}_{stage}_{checkouts.index(c)}"
                    if stage == "pretrain":
                        shutil.copytree(prep / "base_pretrain" / "final", wd / "base_pretrain" / "final")
                    wall = train(c, stage, wd, data)
                    step_s = json.loads((wd / stage / "summary.json").read_text()).get("step_s") or float("nan")
                    times.setdefault((stage, str(c)), []).append((wall, step_s))
                    print(f"run {r} {stage:13s} {c}: {wall:6.2f} s (logged step {step_s * 1e3:6.1f} ms)", flush=True)
                    shutil.rmtree(wd)
        print("\n| stage | checkout | wall, median of runs (min-max) | logged step, median |\n|---|---|---:|---:|")
        for (stage, c), runs in times.items():
            walls = [w for w, _ in runs]
            print(f"| {stage} | {c} | {statistics.median(walls):.2f} s ({min(walls):.2f}-{max(walls):.2f}) | "
                  f"{statistics.median(s for _, s in runs) * 1e3:.1f} ms |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
