"""When does the hypernetwork leave its plateau? The multi-QA escape step over seeds, for one recipe.

    .venv/bin/python experiments/plateau_escape.py --base W/base_pretrain --workdir OUT --seeds 0,1,2,3,4 \
        [--steps 300] [--margin 0.05] [--taskset 0] [--name NAME] [-- --config.shine.mem_init=normal ...]

For every seed: SHINE pretraining (RECON/COMP, the tiny recipe) and then multi-QA training of ``--steps`` steps,
validated every 25 steps, each seed in ``OUT/seed<S>`` with the trained base linked in (``--base`` is a
``base_pretrain`` stage folder). The escape step is the first validation step whose loss is at least ``--margin``
below the multi-QA stage's initial validation loss. Everything after ``--`` is passed to both stages (``ift_mqa.``
prefixes reach one stage only). ``--taskset 0`` pins the training processes to CPU 0 (XLA then runs on one thread
of one core). Writes ``OUT/escape.json`` and prints one line per seed and the mean / spread.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys


def run(cmd: list[str], taskset: str, log: pathlib.Path) -> None:
    if taskset:
        cmd = ["taskset", "-c", taskset] + cmd
    with open(log, "a", encoding="utf-8") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def escape_step(metrics: pathlib.Path, margin: float) -> tuple[int | None, list[tuple[int, float]]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    curve = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    start = curve[0][1]
    return next((s for s, v in curve if v <= start - margin), None), curve


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="a trained base_pretrain stage folder")
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=300, help="multi-QA steps")
    p.add_argument("--pretrain-steps", type=int, default=100, help="RECON/COMP steps before them")
    p.add_argument("--margin", type=float, default=0.05)
    p.add_argument("--taskset", default="", help="CPU list for taskset -c (e.g. 0)")
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--data-dir", default="", help="the prepared corpus the base was trained with")
    p.add_argument("--name", default="")
    a = p.parse_args(argv)
    out = pathlib.Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    exe = str(pathlib.Path(sys.executable).with_name("shine-jax"))
    data = [f"--config.data.dir='{a.data_dir}'"] if a.data_dir else []
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        w = out / f"seed{seed}"
        w.mkdir(exist_ok=True)
        link = w / "base_pretrain"
        if not link.exists():
            os.symlink(os.path.abspath(a.base), link)
        common = [f"--config.seed={seed}", *data]
        stage_extra = {"pretrain": [], "ift_mqa": []}
        for item in extra:
            key = item.removeprefix("--config.")
            head, _, rest = key.partition(".")
            for stage in stage_extra:
                if head == stage:
                    stage_extra[stage].append(f"--config.{rest}")
                elif head not in stage_extra:
                    stage_extra[stage].append(item)
        run([exe, "train", "--config", f"{a.config}:pretrain", "--workdir", str(w), *common,
             f"--config.steps={a.pretrain_steps}", f"--config.optim.warmup_steps={min(20, a.pretrain_steps)}",
             *stage_extra["pretrain"]], a.taskset, w / "train.log")
        run([exe, "train", "--config", f"{a.config}:ift_mqa", "--workdir", str(w), *common,
             f"--config.steps={a.steps}", "--config.eval_every=25", "--config.log_every=25",
             "--config.checkpoint_every=1000",
             *stage_extra["ift_mqa"]], a.taskset, w / "train.log")
        step, curve = escape_step(w / "ift_mqa" / "metrics.jsonl", a.margin)
        results.append({"seed": seed, "escape_step": step, "val_curve": curve})
        print(f"seed {seed}: escape step {step}  (val {curve[0][1]:.3f} -> {curve[-1][1]:.3f})", flush=True)
    steps = [r["escape_step"] if r["escape_step"] is not None else a.steps + 25 for r in results]
    summary = {"name": a.name, "extra": extra, "margin": a.margin, "steps": a.steps,
               "pretrain_steps": a.pretrain_steps, "taskset": a.taskset,
               "seeds": results, "escaped": sum(r["escape_step"] is not None for r in results),
               "mean_escape": statistics.mean(steps), "stdev_escape": statistics.stdev(steps) if len(steps) > 1 else 0.0,
               "final_val_mean": statistics.mean(r["val_curve"][-1][1] for r in results)}
    (out / "escape.json").write_text(json.dumps(summary, indent=1))
    print(f"{a.name or 'recipe'}: escaped {summary['escaped']}/{len(results)}, escape step mean "
          f"{summary['mean_escape']:.0f} (sample sd {summary['stdev_escape']:.0f}; not escaped counted as {a.steps + 25}), "
          f"final val mean {summary['final_val_mean']:.3f}")


if __name__ == "__main__":
    main()
