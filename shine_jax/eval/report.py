"""Results files of an evaluation: ``results.json``, a Markdown table beside it, and a PNG of F1 per method
(with the per-turn F1 curves when the data is multi-turn)."""

from __future__ import annotations

import json
import pathlib


def markdown_table(results: dict) -> str:
    rows = ["| method | F1 | EM | questions | docs | per-doc cost (s) | generation (s / question) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["methods"].items():
        rows.append(f"| {name} | {r['f1']:.3f} | {r['em']:.3f} | {r['questions']} | {r['documents']} | "
                    f"{r['doc_cost_s']:.4f} | {r['gen_s_per_question']:.4f} |")
    return "\n".join(rows) + "\n"


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    multi_turn = max(len(r["per_turn_f1"]) for r in methods.values()) > 1
    fig, axes = plt.subplots(1, 2 if multi_turn else 1, figsize=(11 if multi_turn else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    names = list(methods)
    ax.bar(names, [methods[n]["f1"] for n in names], color=["#999", "#4a90d9", "#e8a33d", "#3aa655"][: len(names)])
    ax.set_ylabel("token F1")
    ax.set_ylim(0, 1)
    ax.set_title("F1 per method")
    for i, n in enumerate(names):
        ax.text(i, methods[n]["f1"] + 0.02, f"{methods[n]['f1']:.2f}", ha="center")
    if multi_turn:
        ax = axes[0, 1]
        for n in names:
            turns = methods[n]["per_turn_f1"]
            ax.plot(range(1, len(turns) + 1), turns, marker="o", label=n)
        ax.set_xlabel("turn")
        ax.set_ylabel("token F1")
        ax.set_ylim(0, 1)
        ax.set_title("F1 per conversation turn")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict, out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)
    md = out.with_suffix(".md")
    md.write_text(markdown_table(results))
    png = out.with_suffix(".png")
    plot(results, png)
    return {"json": out, "markdown": md, "png": png}
