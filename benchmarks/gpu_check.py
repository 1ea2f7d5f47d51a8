"""GPU check of the SHINE train step: bf16 matmul peak, step time and MFU at Qwen3-0.6B / 1.7B shapes, plan vs memory.

NOT YET RUN ON A GPU: written and exercised on CPU only (``--cpu-smoke``); the first GPU run should be read with that
in mind. Driven by ``benchmarks/gpu_check.sh`` (python and jax detection, an overall ``timeout``); by hand:

    python benchmarks/gpu_check.py all [--budget 440] [--steps 5] [--out FILE] [--set KEY=VALUE ...]
    python benchmarks/gpu_check.py all --cpu-smoke         # tiny shapes on CPU: exercises every code path

``all`` runs each measurement in its own subprocess (a clean ``peak_bytes_in_use`` per case, an OOM or a hang costs
one case), each under a deadline cut from ``--budget``, in order of importance:

1. ``peak``: the bf16 matmul peak of the device (8192^3, jnp.dot, median of timed runs) -- first, as the reference;
2. ``step`` for Qwen3-0.6B then Qwen3-1.7B (``configs/qwen3_{0p6b,1p7b}.py:pretrain`` shapes through their presets,
   random weights; bf16 compute as the paper configs set it, remat on; micro batch 8 = the paper's 32 / grad_accum 4,
   evidence 1,150, conversation 2,380, labels on the conversation after its first 8 tokens), one micro batch per
   step: median step time, model FLOPs per step (``train.flops.shine_step_flops``) -> FLOP/s and MFU against 1.;
   ``shine_jax.plan.plan``'s per-device bytes against ``jax.devices()[0].memory_stats()['peak_bytes_in_use']``;
3. the same steps with cuDNN flash attention: shine_jax's attention switch (``model.attention``: ``reference``,
   the einsum path with a hand-written backward, by default; ``cudnn``, ``jax.nn.dot_product_attention`` with
   ``implementation="cudnn"``), found by name (a ``model.*`` config field holding "attention" or "attn") and set to
   ``cudnn``. The paper configs store the frozen base in bfloat16 (``model.frozen_param_dtype``), as these steps do.

Every figure goes to stdout and, as JSON, to ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {"qwen3-0.6b": "configs/qwen3_0p6b.py:pretrain", "qwen3-1.7b": "configs/qwen3_1p7b.py:pretrain"}
GPU_SHAPES = dict(batch=8, context=1150, conversation=2380)  # micro batch 8 (the paper's 32 / grad_accum 4)
SMOKE_SHAPES = dict(batch=2, context=48, conversation=32)
SMOKE_MODEL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=4",
               "model.num_kv_heads=2", "model.head_dim=16", "model.vocab_size=512", "shine.lora_rank=2",
               "shine.metalora_rank=4", "shine.m2p.num_layers=2", "shine.m2p.num_heads=2"]  # float32: bf16 compiles for minutes on CPU
PROMPT = 8  # unlabelled conversation tokens at the start of each row
RESULT = "RESULT "


def progress(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def use_compilation_cache() -> None:
    """The plan's compile and the run's compile of the same step may share an entry; later cases reuse the M2P's."""
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ.get("GPU_CHECK_XLA_CACHE", os.path.join(
        tempfile.gettempdir(), "shine_jax_gpu_check_xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def emit(obj) -> None:
    print(RESULT + json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------------------------ children
def peak_main(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    n, dt = (512, jnp.float32) if args.cpu_smoke else (args.n, jnp.bfloat16)
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    b = jax.random.normal(jax.random.key(1), (n, n), dt)
    f = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        f(a, b).block_until_ready()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    s = float(np.median(times))
    emit({"what": "peak", "dtype": str(jnp.dtype(dt)), "n": n, "median_s": s, "flops_per_s": 2 * n**3 / s,
          "platform": jax.devices()[0].platform, "device": str(jax.devices()[0].device_kind)})


def attention_fields(cfg) -> list[str]:
    """``model.*`` config fields that look like an attention-implementation switch."""
    return [f"model.{k}" for k in cfg.model.keys() if "attention" in k or "attn" in k]


def step_config(args):
    from shine_jax.train.config import load_config

    shapes = SMOKE_SHAPES if args.cpu_smoke else GPU_SHAPES
    spec = "configs/tiny.py:ift_mqa" if args.cpu_smoke else PRESETS[args.preset]
    overrides = (SMOKE_MODEL if args.cpu_smoke else []) + [
        f"batch_size={shapes['batch']}", "grad_accum=1", f"data.context_length={shapes['context']}",
        f"data.conversation_length={shapes['conversation']}"] + list(args.set or [])
    if args.attention:
        overrides.append(args.attention)
    return load_config(spec, overrides), shapes


def step_main(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from shine_jax import sharding as shd
    from shine_jax.base_model import BaseModel, build_decoder
    from shine_jax.plan import model_config_of
    from shine_jax.plan import plan as plan_fn
    from shine_jax.train import loop
    from shine_jax.train import optimizer as optim
    from shine_jax.train.step import init_state, make_train_step, train_state_shardings

    use_compilation_cache()
    cfg, shapes = step_config(args)
    out = {"what": "step", "preset": args.preset, "attention": args.attention or "default",
           "platform": jax.devices()[0].platform, "compute_dtype": cfg.model.compute_dtype,
           "param_dtype": cfg.model.param_dtype, "remat": bool(cfg.model.remat), **shapes}
    t0 = time.perf_counter()
    if args.plan:
        report = plan_fn(cfg, (1, 1, 1))
        out["plan_bytes"] = report["per_device_bytes"]["total"]
        out["plan_detail"] = report["per_device_bytes"]
        out["plan_s"] = time.perf_counter() - t0
        progress(f"plan: {report['per_device_bytes']['total'] / 2**30:.2f} GiB per device", t0)
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    mcfg = model_config_of(cfg)
    base = BaseModel(build_decoder(mcfg, seed=0, param_dtype=cfg.model.param_dtype, dtype=cfg.model.compute_dtype,
                                   remat=cfg.model.remat))
    task = loop.shine_task(cfg, base, mesh, workdir=None)
    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels, task.lr_mults)
    shardings = train_state_shardings(tx, task.params, task.param_shardings, mesh)
    state = jax.device_put(init_state(task.params, tx), shardings)
    step = jax.jit(make_train_step(task.loss_fn, tx), donate_argnums=(0,))  # as plan and training compile it
    b, tc, tq = shapes["batch"], shapes["context"], shapes["conversation"]
    rng = np.random.default_rng(0)
    ids = rng.integers(8, mcfg.vocab_size, (1, b, tq))
    labels = ids.copy()
    labels[..., :PROMPT] = -100
    batch = {"evidence_ids": rng.integers(8, mcfg.vocab_size, (1, b, tc)), "evidence_mask": np.ones((1, b, tc)),
             "input_ids": ids, "attention_mask": np.ones((1, b, tq)), "labels": labels}
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    out["model_flops_per_step"] = task.step_flops
    out["setup_s"] = time.perf_counter() - t0
    progress("model, task and state built", t0)
    times, losses = [], []
    with jax.set_mesh(mesh):
        for i in range(1 + args.warmup + args.steps):
            t = time.perf_counter()
            state, metrics = step(state, task.frozen, batch)
            loss = float(jax.block_until_ready(metrics["loss"]))
            dt = time.perf_counter() - t
            progress(f"step {i}: {dt:.3f} s, loss {loss:.4f}", t0)
            if i == 0:
                out["first_step_s"] = dt  # trace + compile + run
            elif i > args.warmup:
                times.append(dt)
            losses.append(loss)
    out["step_s"] = float(np.median(times))
    out["step_times_s"] = times
    out["losses"] = losses
    out["model_flops_per_s"] = task.step_flops / out["step_s"]
    out["tokens_per_s"] = b * (tc + tq) / out["step_s"]
    stats = jax.devices()[0].memory_stats()
    if stats:
        out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        out["bytes_limit"] = stats.get("bytes_limit")
    emit(out)


# ------------------------------------------------------------------------------------------------ orchestrator
def run_child(argv, timeout_s, log):
    """One child (this file) under a timeout; returns its RESULT dict or {"error": ...}."""
    if timeout_s < 20:
        return {"error": f"skipped: {timeout_s:.0f} s left of the budget"}
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    env = dict(os.environ)
    if "--cpu-smoke" in argv:  # as the tests do: XLA:CPU compiles the step in a fraction of the time
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as e:
        log.write(f"$ {' '.join(argv)}\n(timed out after {timeout_s:.0f} s)\n{_text(e.stdout)}{_text(e.stderr)}\n")
        return {"error": f"timed out after {timeout_s:.0f} s"}
    log.write(f"$ {' '.join(argv)}  ({time.perf_counter() - t:.0f} s, rc {proc.returncode})\n{proc.stdout}"
              f"{proc.stderr}\n")
    log.flush()
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"rc {proc.returncode}: {tail[:300]}"}


def _text(x):
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def gib(x):
    return f"{x / 2**30:.2f} GiB" if isinstance(x, (int, float)) else "n/a"


def report_lines(peak, steps, notes):
    lines = []
    if "error" in peak:
        lines.append(f"matmul peak: {peak['error']}")
        pk = None
    else:
        pk = peak["flops_per_s"]
        lines.append(f"device: {peak['device']} ({peak['platform']}); {peak['dtype']} matmul peak ({peak['n']}^3, "
                     f"median): {pk / 1e12:.1f} TFLOP/s")
    lines += ["", "| model | attention | step (median) | model TFLOP/s | MFU | tokens/s | first step (compile) "
              "| plan: per-device bytes | measured peak_bytes_in_use | measured / plan | losses |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in steps:
        if "error" in s:
            lines.append(f"| {s['preset']} | {s['attention']} | {s['error']} | | | | | | | | |")
            continue
        mfu = f"{s['model_flops_per_s'] / pk:.2f}" if pk else "n/a"
        ratio = (f"{s['peak_bytes_in_use'] / s['plan_bytes']:.2f}" if s.get("peak_bytes_in_use") and
                 s.get("plan_bytes") else "n/a")
        losses = ", ".join(f"{x:.4f}" for x in s["losses"][:3])
        lines.append(f"| {s['preset']} | {s['attention']} | {s['step_s'] * 1e3:.1f} ms | "
                     f"{s['model_flops_per_s'] / 1e12:.2f} | {mfu} | {s['tokens_per_s']:.0f} | "
                     f"{s['first_step_s']:.1f} s | {gib(s.get('plan_bytes'))} | {gib(s.get('peak_bytes_in_use'))} | "
                     f"{ratio} | {losses} |")
    lines += [""] + [f"note: {n}" for n in notes]
    return lines


def all_main(args) -> None:
    start = time.perf_counter()
    deadline = start + args.budget
    smoke = ["--cpu-smoke"] if args.cpu_smoke else []
    common = smoke + [f"--steps={args.steps}", f"--warmup={args.warmup}"] + [f"--set={s}" for s in args.set or []]
    out_path = args.out or (os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None)
    log_path = (os.path.splitext(out_path)[0] + ".log") if out_path else os.devnull
    notes = []
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(log_path, "w") as log:
        peak = run_child(["peak", *smoke], min(90, deadline - time.perf_counter()), log)
        print(f"[gpu_check] peak: {json.dumps(peak)}", flush=True)

        # the attention switch, if shine_jax has one by now
        sys.path.insert(0, ROOT)
        from shine_jax.train.config import load_config

        fields = attention_fields(load_config("configs/tiny.py:ift_mqa"))
        variants = [None]
        if args.variant:
            variants.append(args.variant)
            notes.append(f"second variant given by --variant: {args.variant}"
                         + (f" (attention switch fields found: {', '.join(fields)})" if fields else ""))
        elif fields:
            variants.append(f"{fields[0]}=cudnn")
            notes.append(f"attention switch found: {', '.join(fields)}; compared the default with {fields[0]}=cudnn")
        else:
            notes.append("shine_jax has no attention-implementation switch (no model.*attention*/attn* config field; "
                         "its attention is model.layers.gqa_attention): only the existing attention was timed")
        presets = ["smoke"] if args.cpu_smoke else list(args.presets)
        jobs = [(p, v) for v in variants for p in presets]  # every model with the default attention first
        steps = []
        weights = [2 if variant is None else 1 for _, variant in jobs]  # plan doubles the compiling
        for i, (preset, variant) in enumerate(jobs):
            left = deadline - time.perf_counter()
            share = left * weights[i] / sum(weights[i:])  # unused time passes to the next cases
            argv = ["step", f"--preset={preset}", *common] + (["--plan"] if variant is None else [])
            argv += [f"--attention={variant}"] if variant else []
            res = run_child(argv, share, log)
            res.setdefault("preset", preset)
            res.setdefault("attention", variant or "default")
            steps.append(res)
            print(f"[gpu_check] {preset} / {variant or 'default'}: "
                  f"{json.dumps({k: v for k, v in res.items() if k not in ('plan_detail', 'step_times_s')})}",
                  flush=True)
    notes.append(f"{time.perf_counter() - start:.0f} s in all; budget {args.budget:.0f} s; each case in its own "
                 f"process, plan compiled in the default-attention case only")
    lines = report_lines(peak, steps, notes)
    print("\n" + "\n".join(lines), flush=True)
    if out_path:
        with open(out_path, "w") as f:
            json.dump({"peak": peak, "steps": steps, "notes": notes, "table": lines}, f, indent=1)
        with open(os.path.splitext(out_path)[0] + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"[gpu_check] wrote {out_path} (+ .md, .log)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="every measurement, each in a subprocess, within --budget seconds")
    a.add_argument("--budget", type=float, default=440)
    a.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    a.add_argument("--out", help="JSON results (default $OUT/gpu_check.json when $OUT is set)")
    a.add_argument("--variant", help="config override KEY=VALUE timed as the second variant (default: the attention "
                                     "switch's cudnn value, when a switch exists)")
    pk = sub.add_parser("peak", help="bf16 matmul peak")
    pk.add_argument("--n", type=int, default=8192)
    pk.add_argument("--reps", type=int, default=10)
    st = sub.add_parser("step", help="one preset's SHINE train step")
    st.add_argument("--preset", default="qwen3-0.6b", choices=[*PRESETS, "smoke"])
    st.add_argument("--attention", help="a config override selecting the attention implementation")
    st.add_argument("--plan", action="store_true", help="also run shine_jax.plan on the same config")
    for q in (a, st):
        q.add_argument("--steps", type=int, default=5)
        q.add_argument("--warmup", type=int, default=1)
        q.add_argument("--set", action="append", help="extra config override KEY=VALUE (repeatable)")
    for q in (a, pk, st):
        q.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: exercise the logic")
    args = p.parse_args()
    if args.cmd == "peak" and not args.cpu_smoke:
        args.reps = max(args.reps, 3)
    sys.path.insert(0, ROOT)
    {"all": all_main, "peak": peak_main, "step": step_main}[args.cmd](args)


if __name__ == "__main__":
    main()
