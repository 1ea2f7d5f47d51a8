"""Results files of an evaluation: ``results.json``, a Markdown table beside it, and a PNG of F1 per method
(with the per-turn F1 curves when the data is multi-turn); for several test sets (the demo) one section per set
with its F1 ratios, in a combined ``results.{json,md}`` (:func:`write_summary`)."""

from __future__ import annotations

import json
import pathlib

from shine_jax.fileutil import atomic_files

# (method, reference): the F1 ratios reported when both methods ran. The control's ratio to ``none`` should be
# ~1 on a trained model: an adapter from the wrong document is no better than no adapter.
RATIOS = (("shine", "icl"), ("shine", "none"), ("shine-wrong-doc", "none"))


def f1_ratios(methods: dict) -> dict[str, float]:
    """``{"shine/icl": F1(shine) / F1(icl), ...}`` for the pairs of :data:`RATIOS` that were evaluated."""
    return {f"{m}/{ref}": methods[m]["f1"] / max(methods[ref]["f1"], 1e-9)
            for m, ref in RATIOS if m in methods and ref in methods}


def ratio_line(ratios: dict[str, float]) -> str:
    shine = [f"{v:.2f}x {key.split('/')[1]}" for key, v in ratios.items() if key.startswith("shine/")]
    control = [f"{v:.2f}x {key.split('/')[1]}" for key, v in ratios.items() if key.startswith("shine-wrong-doc/")]
    parts = (["SHINE F1 = " + ", ".join(shine)] if shine else []) + (
        ["wrong-document control F1 = " + ", ".join(control)] if control else [])
    return "; ".join(parts)


def set_section(name: str, results: dict) -> str:
    """One test set's Markdown: a heading with its size, the table, the F1 ratios."""
    first = next(iter(results["methods"].values()))
    ratios = ratio_line(f1_ratios(results["methods"]))
    source = f" ({results['data']})" if results.get("data") else ""
    return (f"### {name}: {first['documents']} documents, {first['questions']} questions{source}"
            f"\n\n{markdown_table(results)}" + (f"\n{ratios}\n" if ratios else "") + bank_line(results))


def bank_line(results: dict) -> str:
    """The bank setting's retrieval, when it was on: how often each method was handed the right document."""
    bank = results.get("bank")
    if not bank:
        return ""
    rag = results["methods"].get("rag", {}).get("top1_chunk_from_own_doc")
    chunks = results["retrieval"]["chunks"]  # the bank is indexed whenever it is on
    return (f"\nbank: {bank['documents']} documents ({chunks} chunks); conversations routed to their own "
            f"document: {bank['routed_to_own_document']:.3f}"
            + (f"; rag questions whose best chunk is from their own document: {rag:.3f}" if rag is not None else "")
            + "\n")


def summarize(results: dict) -> dict:
    """A set's results without the predictions (they stay in the set's own results.json)."""
    methods = {name: {k: v for k, v in r.items() if k != "predictions"} for name, r in results["methods"].items()}
    return {"data": results.get("data"), "methods": methods, "ratios": f1_ratios(results["methods"]),
            **({"bank": results["bank"]} if results.get("bank") else {})}


def write_summary(sets: dict[str, dict], extra: dict, out: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Every set's table and ratios in one ``results.json`` (``{"sets": {name: summary}, **extra}``) and one
    Markdown file beside it."""
    out = pathlib.Path(out)
    md = out.with_suffix(".md")
    with atomic_files(out, md) as (json_tmp, md_tmp):
        json_tmp.write_text(json.dumps({**extra, "sets": {name: summarize(r) for name, r in sets.items()}}, indent=2))
        md_tmp.write_text("\n".join(set_section(name, r) for name, r in sets.items()))
    return {"json": out, "markdown": md}


def markdown_table(results: dict) -> str:
    rows = ["| method | F1 | EM | gold in answer | questions | docs | per-doc cost (s) | generation (s / question) | "
            "storage (KB / doc) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["methods"].items():
        kb = r.get("storage_bytes_per_doc")  # results written before the column existed have none
        contains = r.get("contains")  # nor the containment column
        rows.append(f"| {name} | {r['f1']:.3f} | {r['em']:.3f} | {'' if contains is None else f'{contains:.3f}'} | "
                    f"{r['questions']} | {r['documents']} | "
                    f"{r['doc_cost_s']:.4f} | {r['gen_s_per_question']:.4f} | "
                    f"{'' if kb is None else f'{kb / 1024:.2f}'} |")
    return "\n".join(rows) + "\n"


def results_markdown(results: dict) -> str:
    """One evaluation's Markdown: the table, then F1 per turn for multi-turn data (what ``eval`` prints and writes)."""
    per_turn = per_turn_table(results)
    return markdown_table(results) + (f"\nF1 per turn:\n\n{per_turn}" if per_turn else "")


def per_turn_table(results: dict) -> str:
    """F1 per conversation turn, one row per method (the shape of the paper's Table 1), when the data has more than
    one turn; "" otherwise."""
    methods = results["methods"]
    turns = max(len(r.get("per_turn_f1", [])) for r in methods.values())
    if turns < 2:
        return ""
    rows = ["| method | " + " | ".join(f"turn {t}" for t in range(1, turns + 1)) + " |",
            "|---|" + "---:|" * turns]
    for name, r in methods.items():
        f1 = r.get("per_turn_f1", [])
        rows.append(f"| {name} | " + " | ".join(f"{f1[t]:.3f}" if t < len(f1) else "" for t in range(turns)) + " |")
    return "\n".join(rows) + "\n"


def sets_table(sets: dict[str, dict], metric: str = "f1") -> str:
    """One row per method, one column per evaluated set (the shape of the paper's Table 2): ``metric`` of each
    method on each set (empty where a set did not evaluate that method), then its mean over the sets when it ran on
    every one of them (empty otherwise: a mean over fewer sets would not compare)."""
    names = list(sets)
    methods = list(dict.fromkeys(m for r in sets.values() for m in r["methods"]))
    rows = ["| method | " + " | ".join(names) + " | mean |", "|---|" + "---:|" * (len(names) + 1)]
    for m in methods:
        values = [sets[n]["methods"].get(m, {}).get(metric) for n in names]
        ran = [v for v in values if v is not None]
        mean = f"{sum(ran) / len(ran):.3f}" if len(ran) == len(names) else ""
        rows.append(f"| {m} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + f" | {mean} |")
    return "\n".join(rows) + "\n"


def read_results(path: str | pathlib.Path) -> dict:
    """A ``results.json`` of ``shine-jax eval`` (one set: ``{"methods": {...}}``); ValueError naming what is wrong."""
    try:
        results = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e.msg}, line {e.lineno})") from None
    methods = results.get("methods") if isinstance(results, dict) else None
    if not isinstance(methods, dict) or not methods or not all(
            isinstance(r, dict) and isinstance(r.get("f1"), (int, float)) and isinstance(r.get("em", 0.0), (int, float))
            for r in methods.values()):
        raise ValueError(f"{path} is not the results.json of one `shine-jax eval` run (no methods with an F1)")
    return results


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    multi_turn = max(len(r["per_turn_f1"]) for r in methods.values()) > 1
    fig, axes = plt.subplots(1, 2 if multi_turn else 1, figsize=(11 if multi_turn else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    names = list(methods)
    colors = {"none": "#999", "icl": "#4a90d9", "sft": "#e8a33d", "shine": "#3aa655", "shine-wrong-doc": "#c9c9a0",
              "rag": "#9b59b6"}
    ax.bar(names, [methods[n]["f1"] for n in names], color=[colors.get(n, "#777") for n in names])
    ax.tick_params(axis="x", labelsize=8)  # five method names must fit under their bars
    ax.set_ylabel("token F1")
    ax.set_ylim(0, 1)
    ax.set_title(f"F1 per method: {results['set']}" if results.get("set") else "F1 per method")
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
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    with atomic_files(out, md, png) as (json_tmp, md_tmp, png_tmp):
        json_tmp.write_text(json.dumps(results, indent=2))
        md_tmp.write_text(results_markdown(results))
        plot(results, png_tmp)
    return {"json": out, "markdown": md, "png": png}
