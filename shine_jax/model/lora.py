"""LoRA containers and their application (SHINE_SPEC §6).

A LoRA is a plain pytree, stacked over layers so it can ride along the decoder's ``scan``::

    {"q": {"A": [L, Lb, in, r], "B": [L, Lb, r, out]}, "k": {...}, ..., "down": {...}}

``Lb`` is the LoRA batch. ``Lb == 1`` is a *shared* LoRA broadcast to every input row (SHINE's Meta LoRA);
``Lb == B`` is a *per-example* LoRA (row ``n`` uses adapter ``n``); in general input row ``n`` uses adapter
``n // (B // Lb)``, as the official ``LoraLinear`` does. The update is ``x @ A @ B`` with no alpha/r factor:
SHINE folds its scale into A and B.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from shine_jax.model.config import LORA_MODULES, ModelConfig

LoRA = Mapping[str, Mapping[str, jax.Array]]

# Logical axes of the two factors of each module (leading: layers, lora batch).
_IN_AXIS = {"q": "embed", "k": "embed", "v": "embed", "o": "heads", "gate": "embed", "up": "embed", "down": "mlp"}
_OUT_AXIS = {"q": "heads", "k": "kv_heads", "v": "kv_heads", "o": "embed", "gate": "mlp", "up": "mlp", "down": "embed"}


def logical_axes(module: str, factor: str) -> tuple[str, ...]:
    if factor == "A":
        return ("layers", "batch", _IN_AXIS[module], "lora_rank")
    return ("layers", "batch", "lora_rank", _OUT_AXIS[module])


def lora_shapes(cfg: ModelConfig, rank: int, batch: int = 1) -> dict[str, dict[str, tuple[int, ...]]]:
    L = cfg.num_layers
    return {
        m: {"A": (L, batch, i, rank), "B": (L, batch, rank, o)} for m, (i, o) in cfg.module_dims().items()
    }


def lora_nbytes(cfg: ModelConfig, rank: int, itemsize: int = 4) -> int:
    """The bytes of one document's LoRA of ``rank`` on every projection of every layer (float32 by default)."""
    return cfg.num_layers * cfg.lora_params_per_layer(rank) * itemsize


def lora_rank(lora: LoRA) -> int:
    return next(iter(lora.values()))["A"].shape[-1]


def lora_batch(lora: LoRA) -> int:
    return next(iter(lora.values()))["A"].shape[1]


def check_lora(cfg: ModelConfig, lora: LoRA, input_batch: int | None = None, what: str = "LoRA") -> None:
    """Raise a one-line ValueError when ``lora`` does not fit the model (or the input batch)."""
    if not isinstance(lora, Mapping):
        raise ValueError(f"{what} must be a dict of modules {LORA_MODULES}, got {type(lora).__name__}")
    extra = sorted(set(lora) - set(LORA_MODULES))
    if extra:
        raise ValueError(f"{what} has unknown module(s) {extra}; allowed: {', '.join(LORA_MODULES)}")
    if not lora:
        raise ValueError(f"{what} is empty")
    ranks, batches = set(), set()
    dims = cfg.module_dims()
    for m, leaf in lora.items():
        if set(leaf) != {"A", "B"}:
            raise ValueError(f"{what}[{m!r}] must have exactly the keys 'A' and 'B', got {sorted(leaf)}")
        a, b = leaf["A"], leaf["B"]
        i, o = dims[m]
        if a.ndim != 4 or b.ndim != 4:
            raise ValueError(
                f"{what}[{m!r}] factors must be [layers, batch, in, r] and [layers, batch, r, out], "
                f"got A{tuple(a.shape)} B{tuple(b.shape)}"
            )
        L, lb, ai, r = a.shape
        if (L, ai) != (cfg.num_layers, i) or tuple(b.shape) != (cfg.num_layers, lb, r, o):
            raise ValueError(
                f"{what}[{m!r}] has A{tuple(a.shape)} B{tuple(b.shape)} but the model needs "
                f"A({cfg.num_layers}, batch, {i}, r) B({cfg.num_layers}, batch, r, {o})"
            )
        ranks.add(r)
        batches.add(lb)
    if len(batches) > 1:
        raise ValueError(f"{what} modules disagree on the LoRA batch size: {sorted(batches)}")
    lb = batches.pop()
    if input_batch is not None and input_batch % lb:
        raise ValueError(
            f"{what} batch {lb} does not divide the input batch {input_batch}; use 1 (shared) or a divisor"
        )


@jax.custom_vjp
def _grouped_delta(xg: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``xg @ A @ B`` per group: xg [Lb, n, S, in], A [Lb, in, r], B [Lb, r, out] -> [Lb, n, S, out]."""
    return _grouped_delta_fwd(xg, a, b)[0]


def _grouped_delta_fwd(xg, a, b):
    low = jnp.einsum("gnsi,gir->gnsr", xg, a)
    return jnp.einsum("gnsr,gro->gnso", low, b), (xg, a, b, low)


def _grouped_delta_bwd(res, d_out):
    """Every weight gradient contracts the tokens with the rank-sized operand on the left. Autodiff writes the B
    gradient as ``d_out^T @ low`` ([out, r], then transposed), so XLA:CPU materialises ``d_out`` transposed, a
    ``[out, tokens]`` copy fused with the elementwise backward that produced ``d_out``: on 2 cores those copies
    were ~15 % of the SHINE train step at the speed issue's shapes (``benchmarks/results.md``)."""
    xg, a, b, low = res
    d_low = jnp.einsum("gnso,gro->gnsr", d_out, b)
    d_b = jnp.einsum("gnsr,gnso->gro", low, d_out)
    d_a = jnp.einsum("gnsr,gnsi->gri", d_low, xg).swapaxes(1, 2)
    d_x = jnp.einsum("gnsr,gir->gnsi", d_low, a)
    return d_x, d_a, d_b


_grouped_delta.defvjp(_grouped_delta_fwd, _grouped_delta_bwd)


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ A @ B`` with grouped adapters: x [B, S, in], A [Lb, in, r], B [Lb, r, out] -> [B, S, out]."""
    bsz, seq, d_in = x.shape
    lb = a.shape[0]
    xg = x.reshape(lb, bsz // lb, seq, d_in)
    return _grouped_delta(xg, a.astype(x.dtype), b.astype(x.dtype)).reshape(bsz, seq, -1)


def apply_loras(y: jax.Array, x: jax.Array, layer_loras: Sequence[Mapping[str, Mapping[str, jax.Array]]], module: str):
    """Add the delta of every LoRA (one layer's slice, A [Lb, in, r]) that has ``module`` to ``y``."""
    for lora in layer_loras:
        if module in lora:
            y = y + lora_delta(x, lora[module]["A"], lora[module]["B"])
    return y


LORA_INITS = ("official", "peft")


def init_lora(cfg: ModelConfig, rank: int, next_key: Callable[[], jax.Array], init: str = "official",
              batch: int = 1) -> dict:
    """A fresh LoRA: B = 0, so it starts as no change, and A drawn per module in ``LORA_MODULES`` order, one
    ``next_key()`` each: ``official`` is SHINE's Meta-LoRA init, A ~ N(0, 0.001); ``peft`` is PEFT's default,
    A ~ U(+-1/sqrt(in))."""
    if init not in LORA_INITS:
        raise ValueError(f"LoRA init {init!r} is unknown; use one of {', '.join(LORA_INITS)}")
    out = {}
    for m, shape in lora_shapes(cfg, rank, batch).items():
        if init == "official":
            a = math.sqrt(1e-3) * jax.random.normal(next_key(), shape["A"])
        else:
            a = jax.random.uniform(next_key(), shape["A"], jnp.float32, -1, 1) / math.sqrt(shape["A"][2])
        out[m] = {"A": a, "B": jnp.zeros(shape["B"], jnp.float32)}
    return out


def concat_rank(first: LoRA, second: LoRA) -> dict:
    """Concatenate two LoRAs along the rank axis (the official ``merge_loradicts``): the sum of both updates."""
    return {
        m: {
            "A": jnp.concatenate([first[m]["A"], second[m]["A"]], axis=-1),
            "B": jnp.concatenate([first[m]["B"], second[m]["B"]], axis=-2),
        }
        for m in first
    }


def compose_examples(lora: LoRA, indices: Sequence[int], weights: Sequence[float] | None = None) -> dict:
    """One adapter (batch 1) whose update is the weighted sum of examples ``indices``' updates: their A factors
    side by side along the rank axis, their B factors scaled by the weights and stacked likewise (rank n r)."""
    idx = jnp.asarray(list(indices), jnp.int32)
    w = jnp.ones(len(indices), jnp.float32) if weights is None else jnp.asarray(list(weights), jnp.float32)
    out = {}
    for m, leaf in lora.items():
        a = jnp.take(leaf["A"], idx, axis=1)  # [L, n, in, r]
        b = jnp.take(leaf["B"], idx, axis=1) * w[None, :, None, None].astype(leaf["B"].dtype)  # [L, n, r, out]
        layers, n, d_in, r = a.shape
        out[m] = {"A": jnp.moveaxis(a, 1, 2).reshape(layers, 1, d_in, n * r),
                  "B": b.reshape(layers, 1, n * r, b.shape[-1])}
    return out
