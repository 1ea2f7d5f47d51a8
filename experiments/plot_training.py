"""Loss curves (train loss and validation loss per stage) and wall times of a training workdir.

    python experiments/plot_training.py WORKDIR [--out PNG]   (default: WORKDIR/training.png)

Writes the PNG and prints a Markdown table (stage, steps, wall time, initial and final validation loss).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from shine_jax.train.config import STAGES
from shine_jax.train.metrics import read_metrics


def stage_rows(workdir: pathlib.Path) -> list[tuple[str, list[dict], dict]]:
    out = []
    for stage in STAGES:
        summary = workdir / stage / "summary.json"
        if summary.is_file():
            out.append((stage, read_metrics(workdir / stage / "metrics.jsonl"), json.loads(summary.read_text())))
    return out


def plot(rows, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False)
    for ax, (stage, metrics, summary) in zip(axes[0], rows):
        train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
        val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
        ax.plot(*zip(*train), label="train loss")
        ax.plot(*zip(*val), "o-", label="validation loss")
        ax.set_title(f"{stage} ({summary['wall_s'] / 60:.1f} min)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("cross-entropy (nats / labelled token)")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def table(rows) -> str:
    lines = ["| stage | steps | wall time | validation loss: start -> end |", "|---|---:|---:|---|"]
    for stage, _, s in rows:
        lines.append(f"| {stage} | {s['steps']} | {s['wall_s'] / 60:.1f} min | "
                     f"{s.get('initial_val_loss', float('nan')):.3f} -> {s['val_loss']:.3f} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("--out", default="", help="PNG path (default: WORKDIR/training.png)")
    args = p.parse_args()
    rows = stage_rows(pathlib.Path(args.workdir))
    if not rows:
        raise SystemExit(f"error: {args.workdir} has no finished stage (no <stage>/summary.json)")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "training.png"
    plot(rows, out)
    print(table(rows))
    print(f"\nplot: {out}")


if __name__ == "__main__":
    main()
