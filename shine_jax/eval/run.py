"""Evaluate a trained SHINE folder on a JSONL file and write the results: what ``shine-jax eval`` and
``python -m shine_jax.eval`` (a sweep's child process) both run."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from shine_jax.data.corpus import read_jsonl
from shine_jax.eval.harness import evaluate
from shine_jax.eval.methods import EvalSettings
from shine_jax.eval.report import write_results
from shine_jax.shine import Shine


def evaluate_jsonl(workdir: str | pathlib.Path, data: str | pathlib.Path, methods: Sequence[str],
                   settings: EvalSettings, out: str | pathlib.Path, *, limit: int = 0, on_long: str = "truncate",
                   skip_bad: bool = False, progress: bool = True,
                   bank: str | pathlib.Path | None = None, dtype: str | None = None,
                   ) -> tuple[dict, dict[str, pathlib.Path]]:
    """(results, written files) of ``methods`` on the first ``limit`` records (all when 0) of ``data``; ``bank``: a
    JSONL file whose documents join them in one retrieval bank (the bank setting); ``dtype``: the base's weights and
    compute dtype (None: as saved)."""
    records = read_jsonl(data, skip_bad_lines=skip_bad)
    if limit:
        records = records[:limit]
    extra = None if bank is None else [r["context"] for r in read_jsonl(bank, skip_bad_lines=skip_bad)]
    shine = Shine.load(workdir, compute_dtype=dtype, dtype=dtype)
    results = evaluate(shine, records, list(methods), settings, on_long=on_long, skip_bad=skip_bad,
                       show_progress=progress, bank=extra)
    results["data"] = str(data)
    if bank is not None:
        results["bank"]["file"] = str(bank)
    return results, write_results(results, out)
