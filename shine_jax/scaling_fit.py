"""Power-law fits and scaling plots of a sweep's results table (``shine-jax sweep`` -> ``W/results.csv``).

    shine-jax sweep --config SWEEP.py --workdir W --fit [--fit-metric pretrain_val_loss] [--fit-offset]
        # runs what is not finished yet, then writes W/fit.md and W/fit.png

For each axis with at least two values (LoRA rank ``lora_rank``, M2P depth ``m2p_layers``, Meta LoRA rank
``metalora_rank``, base parameters ``params_base``) it fits ``loss = a * x^(-b)`` (with an offset:
``loss = a * x^(-b) + c``) with ``scipy.optimize.curve_fit``: without an offset, ``log(loss) = log(a) - b log(x)``
(least squares in log space, so each point weighs by its relative error); with one, ``log(loss) = log(a x^(-b) + c)``
started from the offset-free fit, with ``0 <= c < min(loss)``. Standard errors are the square roots of the diagonal
of ``curve_fit``'s covariance (scaled by the residual variance; none with as many points as parameters).

Two fits per axis:
- **averaged**: the metric averaged over the other axes at each value of x, using only the settings of the other
  axes that were measured at every x (a balanced subset, so a failed point does not bias the average);
- **held fixed**: one fit per setting of one other axis (the lines of the plot), averaging over the remaining ones.

Runs that share every axis value (the same point with other seeds) are averaged first, and their pooled standard
deviation is reported as the noise level. Writes ``OUT.md`` (exponents with standard errors, fitted curves and the
data behind them) and ``OUT.png`` (one panel per axis: metric vs x on log-log axes, one line per value of another
axis, each run as a faint dot, the averaged fit dashed, like the paper's scaling figure; below it each line's
change in percent of its value at the smallest x, which shows effects too small to see on the shared scale).
"""

from __future__ import annotations

import csv
import itertools
import math
import pathlib
import warnings

import numpy as np

from shine_jax.errors import InputError
from shine_jax.fileutil import atomic_files

AXES = {"lora_rank": "LoRA rank r", "m2p_layers": "M2P depth", "metalora_rank": "Meta LoRA rank",
        "params_base": "base parameters"}
LINE_AXIS = {"lora_rank": "params_base", "m2p_layers": "params_base", "metalora_rank": "params_base",
             "params_base": "lora_rank"}  # which other axis draws the lines of each panel


def read_rows(path: pathlib.Path, metric: str) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path} does not exist: run the sweep first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        raise InputError(f"{path} has no column {metric!r} (columns: {', '.join(rows[0])})")
    out = []
    for r in rows:
        if r.get("status", "finished") != "finished" or not r.get(metric):
            continue
        rec = {"name": r.get("name", ""), "y": float(r[metric]), "seed": r.get("seed") or "0"}
        for a in AXES:
            if r.get(a):
                rec[a] = float(r[a])
        out.append(rec)
    return out


def replicate_spread(rows: list[dict]) -> dict | None:
    """Runs that share every axis value (e.g. the same point with another training seed): the pooled standard
    deviation of the metric across them, the noise level to compare the effects of the axes with."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(a) for a in AXES), []).append(r["y"])
    reps = [ys for ys in groups.values() if len(ys) >= 2]
    if not reps:
        return None
    pooled = math.sqrt(sum(np.var(ys, ddof=1) * (len(ys) - 1) for ys in reps) / sum(len(ys) - 1 for ys in reps))
    return {"settings": len(reps), "runs": sum(len(ys) for ys in reps), "pooled_std": pooled,
            "max_range": max(max(ys) - min(ys) for ys in reps)}


def paired_effect(rows: list[dict], axis: str) -> dict | None:
    """Metric at the largest minus at the smallest value of ``axis`` for runs that share every other axis value and
    the training seed (same data order and initialisation stream), so the seed's effect cancels in each pair."""
    others = [a for a in AXES if a != axis]
    lo, hi = min(r[axis] for r in rows), max(r[axis] for r in rows)
    by_key: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        if r[axis] in (lo, hi):
            by_key.setdefault(tuple(r.get(o) for o in others) + (r["seed"],), {}).setdefault(r[axis], []).append(r["y"])
    diffs = [float(np.mean(v[hi]) - np.mean(v[lo])) for v in by_key.values() if lo in v and hi in v]
    if not diffs:
        return None
    sem = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return {"low": lo, "high": hi, "pairs": len(diffs), "mean": float(np.mean(diffs)), "sem": sem,
            "lower": sum(d < 0 for d in diffs)}


def fit_power_law(x, y, offset: bool = False) -> dict:
    """``y ≈ a x^(-b)`` (+ ``c`` with ``offset``) by ``scipy.optimize.curve_fit`` on ``log y``; returns a, b, c,
    their standard errors ``a_se``, ``b_se``, ``c_se`` (nan where the points do not outnumber the parameters) and
    the squared log residual ``sse_log``."""
    from scipy.optimize import OptimizeWarning, curve_fit

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.any(x <= 0) or np.any(y <= 0) or len(np.unique(x)) < 2:
        raise ValueError("a power-law fit needs at least two distinct positive x and positive y values")
    logx, logy = np.log(x), np.log(y)

    def standard_errors(pcov, n):
        se = np.sqrt(np.diag(pcov)) if np.all(np.isfinite(pcov)) else np.full(n, np.nan)
        return [float(v) for v in se]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # as many points as parameters: no covariance, se = nan
        (log_a, b), pcov = curve_fit(lambda lx, la, b: la - b * lx, logx, logy, p0=(logy.mean(), 0.0))
        log_a_se, b_se = standard_errors(pcov, 2)
        fit = {"a": float(math.exp(log_a)), "b": float(b), "c": 0.0, "a_se": float(math.exp(log_a) * log_a_se),
               "b_se": b_se, "c_se": float("nan"), "sse_log": float(np.sum((log_a - b * logx - logy) ** 2))}
        if not offset or len(x) < 3:
            return fit
        top = float(y.min()) * (1 - 1e-9)

        def model(lx, a, b, c):
            return np.log(a * np.exp(-b * lx) + c)

        c0 = 0.5 * top  # start halfway up the allowed range, the power law refitted to what lies above it
        (a, b, c), pcov = curve_fit(model, logx, logy, p0=(fit["a"], max(fit["b"], 1e-3), c0),
                                    bounds=([1e-12, -10.0, 0.0], [np.inf, 10.0, top]), maxfev=20000)
    a_se, b_se, c_se = standard_errors(pcov, 3)
    sse = float(np.sum((model(logx, a, b, c) - logy) ** 2))
    return {"a": float(a), "b": float(b), "c": float(c), "a_se": a_se, "b_se": b_se, "c_se": c_se, "sse_log": sse}


def balanced_means(rows: list[dict], axis: str, over: list[str]) -> tuple[list[float], list[float], int]:
    """Mean metric per value of ``axis`` over the settings of ``over`` present at every value of ``axis``."""
    xs = sorted({r[axis] for r in rows})
    settings = [{tuple(r.get(o) for o in over) for r in rows if r[axis] == x} for x in xs]
    common = set.intersection(*settings) if settings else set()
    means = []
    for x in xs:
        ys = [r["y"] for r in rows if r[axis] == x and tuple(r.get(o) for o in over) in common]
        means.append(float(np.mean(ys)) if ys else float("nan"))
    return xs, means, len(common)


def axes_present(rows: list[dict]) -> list[str]:
    return [a for a in AXES if len({r.get(a) for r in rows if a in r}) >= 2 and all(a in r for r in rows)]


def average_replicates(rows: list[dict]) -> list[dict]:
    """One row per setting of the axes: replicates (other seeds) averaged, so each setting weighs the same."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(a) for a in AXES), []).append(r)
    return [{**rs[0], "y": float(np.mean([r["y"] for r in rs])), "runs": len(rs)} for rs in groups.values()]


def analyse(rows: list[dict], offset: bool = False) -> list[dict]:
    runs = rows
    rows = average_replicates(rows)
    axes = axes_present(rows)
    results = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        xs, ys, n = balanced_means(rows, axis, others)
        res = {"axis": axis, "x": xs, "y": ys, "settings_averaged": n, "averaged": None, "lines": [],
               "paired": paired_effect(runs, axis)}
        if n and all(np.isfinite(ys)):
            res["averaged"] = fit_power_law(xs, ys, offset)
        line_axis = LINE_AXIS.get(axis) if LINE_AXIS.get(axis) in others else (others[0] if others else None)
        res["line_axis"] = line_axis
        for v in sorted({r[line_axis] for r in rows}) if line_axis else []:
            sub = [r for r in rows if r[line_axis] == v]
            lx, ly, ln = balanced_means(sub, axis, [o for o in others if o != line_axis])
            line = {"value": v, "x": lx, "y": ly, "fit": None}
            if ln and len(lx) >= 2 and all(np.isfinite(ly)):
                line["fit"] = fit_power_law(lx, ly, offset)
            res["lines"].append(line)
        results.append(res)
    return results


def fmt_value(axis: str, v: float) -> str:
    return f"{v / 1e6:.3g}M" if axis == "params_base" else f"{v:g}"


def _pm(fit: dict, name: str) -> str:
    """``value ± standard error`` (the value alone where there is no error estimate)."""
    se = fit.get(f"{name}_se", float("nan"))
    return f"{fit[name]:.4f} ± {se:.4f}" if np.isfinite(se) else f"{fit[name]:.4f}"


def markdown(results: list[dict], metric: str, source: str, offset: bool, spread: dict | None = None) -> str:
    law = "a·x^(-b) + c" if offset else "a·x^(-b)"
    lines = [f"# Power-law fits of `{metric}` ({source})", "",
             f"Fit: {metric} ≈ {law}, `scipy.optimize.curve_fit` on log {metric} (shine_jax/scaling_fit.py); "
             "± one standard error (none where the points do not outnumber the parameters). *Averaged*: the "
             "metric averaged over the other axes (settings measured at every x); *held fixed*: one fit per value "
             "of the line axis, averaged over the remaining axes.", "",
             "| axis | fit | exponent b | a | c | values of x | mean metric at each x |",
             "|---|---|---:|---:|---:|---|---|"]
    for r in results:
        f = r["averaged"]
        xs = ", ".join(fmt_value(r["axis"], x) for x in r["x"])
        ys = ", ".join(f"{y:.4f}" for y in r["y"])
        if f:
            lines.append(f"| {AXES[r['axis']]} | averaged over {r['settings_averaged']} settings | {_pm(f, 'b')} | "
                         f"{_pm(f, 'a')} | {_pm(f, 'c')} | {xs} | {ys} |")
        for ln in r["lines"]:
            lf = ln["fit"]
            if lf:
                lines.append(f"| {AXES[r['axis']]} | {AXES[r['line_axis']]} = {fmt_value(r['line_axis'], ln['value'])} "
                             f"| {_pm(lf, 'b')} | {_pm(lf, 'a')} | {_pm(lf, 'c')} | "
                             f"{', '.join(fmt_value(r['axis'], x) for x in ln['x'])} | "
                             f"{', '.join(f'{y:.4f}' for y in ln['y'])} |")
    lines += ["", "A positive b means the metric falls as the axis grows (the paper's finding along every axis)."]
    paired = [r for r in results if r.get("paired")]
    if paired:
        lines += ["", "Paired differences (runs sharing every other axis value and the training seed, so the "
                      "seed's effect cancels): metric at the largest minus at the smallest x.", "",
                  "| axis | x: low -> high | pairs | mean difference ± standard error | pairs where it fell |",
                  "|---|---|---:|---:|---:|"]
        for r in paired:
            d = r["paired"]
            lines.append(f"| {AXES[r['axis']]} | {fmt_value(r['axis'], d['low'])} -> {fmt_value(r['axis'], d['high'])} "
                         f"| {d['pairs']} | {d['mean']:+.4f} ± {d['sem']:.4f} | {d['lower']} of {d['pairs']} |")
    if spread:
        lines += ["", f"Replicates (runs sharing every axis value, e.g. other training seeds): {spread['runs']} runs "
                      f"of {spread['settings']} settings; pooled standard deviation of {metric} "
                      f"{spread['pooled_std']:.4f}, largest range {spread['max_range']:.4f}: the noise of one run. "
                      "Much of it is shared by runs with the same seed, which the paired differences cancel."]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], metric: str, path: pathlib.Path, rows: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(2, len(results), figsize=(4.4 * len(results), 6.6), squeeze=False,
                            gridspec_kw={"height_ratios": [3, 2]})
    for ax, rel, r in zip(axs[0], axs[1], results):
        colors = itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])
        for ln in r["lines"]:
            color = next(colors)
            label = f"{AXES[r['line_axis']]} {fmt_value(r['line_axis'], ln['value'])}"
            if ln["fit"]:
                label += f" (b={ln['fit']['b']:.3f})"
            ax.plot(ln["x"], ln["y"], "o-", color=color, label=label)
            rel.plot(ln["x"], [100 * (y / ln["y"][0] - 1) for y in ln["y"]], "o-", color=color)
            runs = [(row[r["axis"]], row["y"]) for row in rows or () if row.get(r["line_axis"]) == ln["value"]]
            if runs:  # every run (other values of the averaged axes, other seeds) as a faint dot
                ax.plot(*zip(*runs), ".", color=color, alpha=0.35)
        if r["averaged"]:
            f = r["averaged"]
            grid = np.geomspace(min(r["x"]), max(r["x"]), 50)
            ax.plot(grid, f["a"] * grid ** (-f["b"]) + f["c"], "k--", lw=1,
                    label=f"fit, averaged: b={f['b']:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(r["x"])
        ax.set_xticklabels([fmt_value(r["axis"], x) for x in r["x"]])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel(AXES[r["axis"]])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        rel.set_xscale("log")
        rel.set_xticks(r["x"])
        rel.set_xticklabels([fmt_value(r["axis"], x) for x in r["x"]])
        rel.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        rel.axhline(0, color="k", lw=0.6)
        rel.set_xlabel(AXES[r["axis"]])
        rel.grid(alpha=0.3)
    axs[0][0].set_ylabel(metric)
    axs[1][0].set_ylabel("change vs the smallest x (%)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fit_sweep(csv_path: str | pathlib.Path, out: str | pathlib.Path, metric: str = "pretrain_val_loss",
              offset: bool = False, log=print) -> list[dict]:
    """Fit and plot a sweep's ``results.csv``: ``OUT.md`` and ``OUT.png`` (written together, atomically);
    returns the per-axis results."""
    csv_path, out = pathlib.Path(csv_path), pathlib.Path(out)
    rows = read_rows(csv_path, metric)
    if not rows:
        raise InputError(f"{csv_path} has no finished point with a value of {metric}")
    results = analyse(rows, offset)
    if not results:
        raise InputError(f"no axis of {', '.join(AXES)} takes two values in {csv_path}: nothing to fit")
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    with atomic_files(md, png) as (md_tmp, png_tmp):
        md_tmp.write_text(markdown(results, metric, str(csv_path), offset, replicate_spread(rows)))
        plot(results, metric, png_tmp, rows)
    for r in results:
        if r["averaged"]:
            log(f"{AXES[r['axis']]:>16}: b = {_pm(r['averaged'], 'b')} (averaged over {r['settings_averaged']} "
                f"settings of the other axes)")
    log(f"fit: {md}  plot: {png}")
    return results
