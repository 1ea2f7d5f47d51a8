"""Where a jitted train step spends its time: a ``jax.profiler`` trace, each op matched to the optimised HLO.

    .venv/bin/python benchmarks/step_profile.py [--case issue15|tiny_base|tiny_ift] [--steps 3] [--top 25]

Builds the step of ``benchmarks/train_step_speed.py``'s case (the library as it is), runs it twice to warm up,
traces ``--steps`` steps and prints per step: the executed time, the time per category (matmuls of the base and
its LoRAs, of the M2P, of the LM head; attention; the layer scan's buffers; thread-pool waits; other elementwise
ops and copies), and the ``--top`` non-matmul ops with their HLO shape and the JAX operation they come from.
This is the measurement behind the speed records in ``benchmarks/results.md``; a category is assigned from the
op's shapes at the issue15 shapes (``332``: evidence + memory tokens per row, ``1824``: M2P tokens, ``4096``:
vocabulary), so other cases get a coarser split. Times are summed over the threads that ran an op.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

# XLA reads its flags when the backend starts: the optimised HLO is dumped for every compiled program
OUT = tempfile.mkdtemp(prefix="step_profile_")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={OUT}/hlo --xla_dump_hlo_as_text"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step_speed as speed  # noqa: E402  (the cases and their batches)

from shine_jax.train.step import make_train_step  # noqa: E402

EXECUTED = "ThunkExecutor::Execute (wait for completion)"


def build_step(case: str):
    """(jitted step, its arguments) for one of ``train_step_speed.CASES``."""
    _, task, tx, state, batch = speed.setup(case, np.random.default_rng(0))
    return jax.jit(make_train_step(task.loss_fn, tx)), (state, task.frozen, batch)


def category(name: str, signature: str) -> str:
    if re.search(r"332,332|664,332|664,64|,332,64|2,64,332", signature):
        return "attention"
    if "1824" in signature or "304," in signature:
        return "M2P"
    if "4096" in signature:
        return "LM head"
    if name.startswith(("ynn_fusion", "dot")):
        return "matmuls (base, LoRA)"
    if "broadcast" in name or "dynamic" in name:
        return "scan buffers (zero fills, dynamic slices/updates)"
    if "Await" in name:
        return "thread-pool waits"
    return "other elementwise ops and copies"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="issue15", choices=sorted(speed.CASES))
    p.add_argument("--steps", type=int, default=3, help="traced steps (times are per step)")
    p.add_argument("--top", type=int, default=25, help="non-matmul ops to list")
    args = p.parse_args()
    out = OUT
    step, step_args = build_step(args.case)
    for _ in range(2):
        jax.block_until_ready(step(*step_args)[1]["loss"])
    t = time.perf_counter()
    with jax.profiler.trace(f"{out}/trace", create_perfetto_trace=True):
        for _ in range(args.steps):
            jax.block_until_ready(step(*step_args)[1]["loss"])
    wall = (time.perf_counter() - t) / args.steps

    hlo_files = glob.glob(f"{out}/hlo/*jit_step*cpu_after_optimizations.txt")
    hlo = max((open(f).read() for f in hlo_files), key=len) if hlo_files else ""
    trace = json.load(gzip.open(glob.glob(f"{out}/trace/**/*.trace.json.gz", recursive=True)[0]))
    per_op = collections.Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X":
            per_op[e["name"]] += e["dur"] / 1e3 / args.steps  # ms per step

    def signature(name):
        m = re.search(r"%" + re.escape(name) + r" = ([^ ]+) [a-z\-]+\((.*?)\)[,\s]", hlo)
        sig = m.group(1) if m else ""
        calls = re.search(r"%" + re.escape(name) + r" = .*?calls=%([\w.\-]+)", hlo)
        if calls:
            head = re.search(r"^%" + re.escape(calls.group(1)) + r" \((.*?)\) ->", hlo, re.M)
            sig += " <- " + (head.group(1) if head else "")
        return sig

    def origin(name):
        m = re.search(r"%" + re.escape(name) + r' = .*?op_name="([^"]*)"', hlo)
        return m.group(1)[-60:] if m else ""

    ops = {n: t for n, t in per_op.items() if not n.startswith("$") and "ThunkExecutor" not in n
           and not n.startswith("PjitFunction")}
    cats = collections.Counter()
    for n, t in ops.items():
        cats[category(n, signature(n))] += t
    print(f"case {args.case}: {jax.device_count()} x {jax.devices()[0].platform}, "
          f"{len(os.sched_getaffinity(0))} cpus; per step: wall {wall * 1e3:.0f} ms, "
          f"executed {per_op.get(EXECUTED, 0.0):.0f} ms\n")
    print("| category | ms / step |\n|---|---:|")
    for c, t in cats.most_common():
        print(f"| {c} | {t:.1f} |")
    print(f"\nthe {args.top} slowest non-matmul ops (ms / step, HLO shape <- fused inputs, JAX op):")
    shown = 0
    for n, t in sorted(ops.items(), key=lambda kv: -kv[1]):
        if n.startswith("ynn_fusion") or shown >= args.top:
            continue
        shown += 1
        print(f"  {t:6.1f}  {n:40s} {signature(n)[:90]}  | {origin(n)}")
    print(f"\ntrace and HLO dump: {out}")


if __name__ == "__main__":
    main()
