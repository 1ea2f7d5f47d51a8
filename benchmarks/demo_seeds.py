"""The demo recipe over several training seeds: its spread, not one run's luck (not run by CI).

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0,1,2 | --num-seeds N] [--workdir workdirs/demo_seeds]
        [--out benchmarks/demo_seeds] [--dry-run] [--collect-only] [DEMO OPTIONS ...]

Seed S runs ``shine-jax demo --workdir ROOT/seedS --config.seed=S DEMO OPTIONS`` (one process per seed; a finished
stage is reused as in any demo run). Options this script does not know go to every demo unchanged (``--docs 8``,
``--config.ift_mqa.steps=400``, ...). Then OUT.json and OUT.md get every seed's per-set tables and, per test set,
the mean, standard deviation (sample, n - 1) and minimum over the seeds of each method's F1 and EM and of the F1
ratios (shine/icl, shine/none, shine-wrong-doc/none). The test sets are fixed by the corpus seed, not by
``--config.seed``, so the spread is the training's alone. One demo takes ~20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or not all(0 <= s <= 2**31 - 1 for s in seeds):
        raise SystemExit(f"error: --seeds must be distinct integers in [0, 2**31 - 1], comma-separated, got {text!r}")
    return seeds


def demo_command(seed: int, root: pathlib.Path, demo_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "shine_jax.cli", "demo", "--workdir", str(root / f"seed{seed}"),
            f"--config.seed={seed}", *demo_args]


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "n": len(values)}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """set -> {"methods": {method: {"f1": stats, "em": stats}}, "ratios": {ratio: stats}} over the seeds."""
    values: dict = {}
    for summary in per_seed.values():
        for name, s in summary["sets"].items():
            agg = values.setdefault(name, {"methods": {}, "ratios": {}})
            for method, r in s["methods"].items():
                for key in ("f1", "em"):
                    agg["methods"].setdefault(method, {}).setdefault(key, []).append(r[key])
            for ratio, v in s["ratios"].items():
                agg["ratios"].setdefault(ratio, []).append(v)
    return {name: {"methods": {m: {k: stats(v) for k, v in kv.items()} for m, kv in agg["methods"].items()},
                   "ratios": {r: stats(v) for r, v in agg["ratios"].items()}} for name, agg in values.items()}


def markdown(per_seed: dict[int, dict], agg: dict) -> str:
    from shine_jax.eval.report import set_section

    lines = [f"# Demo over seeds {', '.join(map(str, per_seed))}", ""]
    for name, a in agg.items():
        lines += [f"## {name}: mean, standard deviation and minimum over {len(per_seed)} seeds", "",
                  "| method | F1 mean | F1 std | F1 min | EM mean | EM std | EM min |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for method, m in a["methods"].items():
            f1, em = m["f1"], m["em"]
            lines.append(f"| {method} | {f1['mean']:.3f} | {f1['std']:.3f} | {f1['min']:.3f} | "
                         f"{em['mean']:.3f} | {em['std']:.3f} | {em['min']:.3f} |")
        lines += ["", "| F1 ratio | mean | std | min |", "|---|---:|---:|---:|"]
        lines += [f"| {r} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} |" for r, s in a["ratios"].items()]
        lines.append("")
    for seed, summary in per_seed.items():
        lines += [f"## seed {seed}", ""] + [set_section(name, s) for name, s in summary["sets"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # a demo option must never be taken for one of ours
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--num-seeds", type=int, default=None, help="seeds 0..N-1 instead of --seeds")
    p.add_argument("--workdir", default="workdirs/demo_seeds", help="root: one demo workdir per seed under it")
    p.add_argument("--out", default="benchmarks/demo_seeds", help="writes OUT.json and OUT.md")
    p.add_argument("--dry-run", action="store_true", help="print the demo commands; run nothing")
    p.add_argument("--collect-only", action="store_true", help="only aggregate the seeds' finished results")
    args, demo_args = p.parse_known_args(argv)
    if args.seeds is not None and args.num_seeds is not None:
        raise SystemExit("error: pass --seeds or --num-seeds, not both")
    if args.num_seeds is not None and args.num_seeds < 1:
        raise SystemExit(f"error: --num-seeds must be >= 1, got {args.num_seeds}")
    seeds = list(range(args.num_seeds)) if args.num_seeds else parse_seeds(args.seeds or "0,1,2")
    if any(a.startswith(("--config.seed=", "--workdir")) for a in demo_args):
        raise SystemExit("error: the seed and the workdir of each demo are set by --seeds and --workdir")
    root = pathlib.Path(args.workdir).resolve()  # the demos run in the repository root
    commands = {seed: demo_command(seed, root, demo_args) for seed in seeds}
    if args.dry_run:
        for cmd in commands.values():
            print(shlex.join(cmd))
        return 0
    if not args.collect_only:
        for seed, cmd in commands.items():
            print(f"[demo_seeds] seed {seed}: {shlex.join(cmd)}", flush=True)
            rc = subprocess.run(cmd, cwd=REPO).returncode
            if rc:
                print(f"error: the demo of seed {seed} failed (exit status {rc})", file=sys.stderr)
                return rc
    per_seed = {}
    for seed in seeds:
        path = root / f"seed{seed}" / "eval" / "results.json"
        if not path.is_file():
            print(f"error: {path} does not exist (the demo of seed {seed} has not finished)", file=sys.stderr)
            return 2
        per_seed[seed] = json.loads(path.read_text())
    agg = aggregate(per_seed)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "demo_args": demo_args, "aggregate": agg,
                                                    "per_seed": per_seed}, indent=2))
    text = markdown(per_seed, agg)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
