"""Compile-only planning: lower and compile one training step for N devices without running it.

Reports per-device memory (XLA ``memory_analysis``), FLOPs per step (XLA ``cost_analysis`` and our analytic count)
and parameter counts, and flags a point that does not fit a given HBM size. Nothing is materialised: parameters
are ``ShapeDtypeStruct``s with shardings, so Qwen3-8B on 64 devices plans on a laptop (fake CPU devices).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from shine_jax import sharding as shd
from shine_jax.base_model import as_dtype, state_shardings
from shine_jax.errors import InputError
from shine_jax.model.config import ModelConfig
from shine_jax.model.decoder import Decoder
from shine_jax.model.hypernet import Hypernetwork, num_memory_tokens
from shine_jax.model.objective import shine_loss
from shine_jax.model.presets import PRESETS
from shine_jax.train import flops as flops_lib
from shine_jax.train import optimizer as optim
from shine_jax.train.config import ConfigError, hyper_config, model_config
from shine_jax.train.step import init_state, make_train_step, train_state_shardings

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9,
          "tb": 1e12}


# XLA:CPU computes bfloat16 matmuls in float32 and hoists those float32 copies of the stacked layer weights out of
# the layer loop (a Qwen3-8B base stored in bfloat16 planned 33 GiB larger than one in float32, 4.5 GiB larger with
# the hoisting off); an accelerator makes no such copies, so planning on CPU turns the hoisting off.
_CPU_PLANNING = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read the size {text!r}; write e.g. 16GiB, 80GB or 1.5e10")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}"
        n /= 1024


def model_config_of(cfg) -> ModelConfig:
    if cfg.model.preset:
        if cfg.model.preset not in PRESETS:
            raise ConfigError(f"config field 'model.preset': {cfg.model.preset!r} is not one of {', '.join(PRESETS)}")
        return PRESETS[cfg.model.preset]
    if cfg.model.source == "scratch":
        return model_config(cfg, cfg.data.tokenizer_vocab)
    from shine_jax.convert.hf import read_hf_config
    return read_hf_config(cfg.model.hf_dir)[0]


def _abstract(module_fn, mesh):
    module = nnx.eval_shape(module_fn)
    graphdef, state = nnx.split(module)
    shardings = nnx.to_pure_dict(state_shardings(state, mesh))
    shapes = nnx.to_pure_dict(state)
    abstract = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), shapes, shardings)
    return graphdef, abstract


def planned_attention(attention: str) -> str:
    """cuDNN attention cannot be lowered for CPU devices: plan it as XLA's (the same FLOPs; cuDNN's flash kernel
    needs less memory than XLA's score matrices, so the plan errs on the safe side)."""
    return "xla" if attention in ("cudnn", "auto") and jax.default_backend() != "gpu" else attention


def plan(cfg, mesh_shape, hbm_bytes: int | None = None) -> dict:
    from shine_jax.train.loop import shine_param_groups

    mesh = shd.make_mesh(mesh_shape)
    mcfg = model_config_of(cfg)
    hcfg = hyper_config(cfg)
    m = num_memory_tokens(mcfg, hcfg)
    dtype = as_dtype(cfg.model.compute_dtype)
    attention = planned_attention(cfg.model.attention)
    dgraph, frozen = _abstract(lambda: Decoder(mcfg, nnx.Rngs(0), param_dtype=as_dtype(cfg.model.frozen_param_dtype),
                                               dtype=dtype, remat=cfg.model.remat, attention=attention), mesh)
    hgraph, params = _abstract(lambda: Hypernetwork(mcfg, hcfg, nnx.Rngs(0)), mesh)

    def loss_fn(p, f, batch):
        return shine_loss(nnx.merge(dgraph, f), nnx.merge(hgraph, p), batch, cfg.shine.loss, cfg.shine.kl_weight)

    labels, mults = shine_param_groups(cfg, params)  # the optimizer training builds, groups and multipliers alike
    tx = optim.make_optimizer(cfg.optim, cfg.steps, labels, mults)
    shardings = train_state_shardings(tx, params, jax.tree.map(lambda a: a.sharding, params), mesh)
    state_shapes = jax.eval_shape(lambda p: init_state(p, tx), params)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state_shapes, shardings)
    micro = cfg.batch_size // cfg.grad_accum
    tc, tq = cfg.data.context_length, cfg.data.conversation_length

    def arr(length, dt=jnp.int32):
        shape = (cfg.grad_accum, micro, length)
        spec = shd.logical_to_spec((None, "batch", None), shape, mesh)
        return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, spec))

    batch = {"evidence_ids": arr(tc), "evidence_mask": arr(tc), "input_ids": arr(tq), "attention_mask": arr(tq),
             "labels": arr(tq)}
    if cfg.shine.loss != "nll":  # the KL loss's in-context teacher (shine_jax.data.pipelines.teacher_example)
        from shine_jax.data.pipelines import teacher_length

        batch.update(teacher_input_ids=arr(teacher_length(tc, tq)), teacher_attention_mask=arr(teacher_length(tc, tq)))
    step = jax.jit(make_train_step(loss_fn, tx), donate_argnums=(0,))
    with jax.set_mesh(mesh):  # activations are pinned to the batch sharding inside the mesh context
        compiled = step.lower(state, frozen, batch).compile(_CPU_PLANNING if jax.default_backend() == "cpu" else None)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    per_device = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                  - mem.alias_size_in_bytes)
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    report = {
        "config": cfg.name, "stage": cfg.stage, "devices": mesh.size, "mesh": dict(mesh.shape),
        "params": {"base": count(frozen), "m2p": count(params["m2p"]), "meta_lora": count(params["metalora"]),
                   "memory_tokens": count(params["mem_tokens"]),
                   "generated_lora": mcfg.num_layers * mcfg.lora_params_per_layer(hcfg.lora_rank)},
        "memory_tokens_M": m,
        "per_device_bytes": {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
                             "temporaries": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes,
                             "total": per_device},
        "xla_flops_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "analytic_flops_per_step": flops_lib.shine_step_flops(mcfg, cfg.batch_size, tc, tq, m, hcfg.m2p.num_layers,
                                                               hcfg.m2p.ffn_mult, hcfg.lora_rank),
    }
    if hbm_bytes:
        report["hbm_bytes"] = hbm_bytes
        report["fits"] = per_device <= hbm_bytes
    return report


def _moves(cfg, mesh):
    """Changes that lower per-device memory, cheapest in compute and precision first: the frozen base in
    bfloat16, then more gradient accumulation (same effective batch; the micro-batch must stay divisible by the
    data x fsdp axes), then remat, then a mesh that shards the weights over every device (fully sharded).
    Yields (config field or "mesh", value, mesh shape to plan on)."""
    shape = tuple(mesh.shape.values())
    if cfg.model.frozen_param_dtype == "float32":
        yield "model.frozen_param_dtype", "bfloat16", shape
    split = mesh.shape["data"] * mesh.shape["fsdp"]
    accum = cfg.grad_accum
    while cfg.batch_size % (accum * 2) == 0 and (cfg.batch_size // (accum * 2)) % split == 0:
        accum *= 2
        yield "grad_accum", accum, shape
    if not cfg.model.remat:
        yield "model.remat", True, shape
    if shape != (1, mesh.size, 1) and cfg.batch_size % mesh.size == 0:
        yield "mesh", (1, mesh.size, 1), (1, mesh.size, 1)


def suggest(cfg, mesh_shape, hbm_bytes: int, max_tries: int = 6) -> dict:
    """The first settings (cumulative, in ``_moves`` order) under which the point fits ``hbm_bytes`` per device,
    each tried by compiling the step again. Returns {"overrides": [...], "total": bytes, "fits": bool, "tried": n}:
    the smallest total found when nothing tried fits."""
    cfg = cfg.copy_and_resolve_references()
    overrides, best = [], None
    for tries, (field, value, shape) in enumerate(_moves(cfg, shd.make_mesh(mesh_shape)), 1):
        if field == "mesh":
            mesh_flag = "--mesh " + ",".join(map(str, value))
            overrides = [o for o in overrides if not o.startswith("--mesh")] + [mesh_flag]
        else:
            node, leaf = (cfg.model, field.split(".")[1]) if field.startswith("model.") else (cfg, field)
            node[leaf] = value
            overrides = [o for o in overrides if not o.startswith(f"--config.{field}=")]
            overrides.append(f"--config.{field}={value}")
        total = plan(cfg, shape)["per_device_bytes"]["total"]
        if best is None or total <= hbm_bytes or total < best["total"]:
            best = {"overrides": list(overrides), "total": total, "fits": total <= hbm_bytes}
        best["tried"] = tries
        if best["fits"] or tries >= max_tries:
            break
    return best or {"overrides": [], "total": None, "fits": False, "tried": 0}


def format_suggestion(sug: dict) -> str:
    if sug["fits"]:
        return f"  fits with {' '.join(sug['overrides'])} ({human(sug['total'])} per device)"
    if sug["tried"]:
        return (f"  nothing tried fits (smallest: {' '.join(sug['overrides'])}, {human(sug['total'])} per device); "
                "use more devices")
    return "  nothing left to try on this many devices; use more devices"


def format_report(r: dict) -> str:
    p = r["params"]
    lines = [f"plan {r['config']}:{r['stage']} on {r['devices']} devices, mesh {r['mesh']}",
             f"  parameters: base {p['base'] / 1e6:.1f}M (frozen), M2P {p['m2p'] / 1e6:.2f}M, Meta LoRA "
             f"{p['meta_lora'] / 1e6:.2f}M, memory tokens {p['memory_tokens'] / 1e6:.3f}M (M={r['memory_tokens_M']}), "
             f"one generated LoRA {p['generated_lora'] / 1e6:.2f}M",
             "  per-device memory: " + ", ".join(f"{k} {human(v)}" for k, v in r["per_device_bytes"].items()),
             f"  FLOPs per step: {r['analytic_flops_per_step']:.3e} (analytic, all devices), "
             f"{r['xla_flops_per_device']:.3e} (XLA cost analysis, per device; loop bodies counted once)"]
    if "fits" in r:
        lines.append(f"  HBM {human(r['hbm_bytes'])}: " + ("fits" if r["fits"] else
                     f"DOES NOT FIT (needs {human(r['per_device_bytes']['total'])} per device)"))
    return "\n".join(lines)
