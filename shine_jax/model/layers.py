"""Pure building blocks of the decoder: RMSNorm, rotary embeddings, masked grouped-query attention, and the
trainable-weight matmul the hypernetwork uses (``linear``).

Attention has two paths with the same signature and the same numbers: ``gqa_attention``, our heads-first matmuls
with a hand-written backward pass (the reference, and the faster one on CPU), and ``fused_attention``, which calls
``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU, XLA elsewhere). ``attend`` picks one by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """``w * x / sqrt(mean(x^2) + eps)``, statistics in float32 (as HF Qwen3/LLaMA do)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


@jax.custom_vjp
def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` (x ``[..., in]``, a trainable w ``[in, out]``) whose weight gradient keeps the activations on the
    left: ``dw = x^T @ g``. Autodiff writes it ``(g^T @ x)^T``, so XLA:CPU transposes the cotangent ``g``, a copy
    fused into the elementwise backward that produced ``g`` (slow on 2 cores, ``benchmarks/results.md``); here
    it transposes the stored ``x`` instead."""
    return x @ w


def _linear_fwd(x, w):
    return x @ w, (x, w)


def _linear_bwd(res, g):
    x, w = res
    d_w = jnp.einsum("ni,no->io", x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]))
    return (g @ w.T).astype(x.dtype), d_w.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[B, T, head_dim]`` in float32 for the rotate-half convention."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x ``[B, T, heads, hd]``; rotate-half RoPE."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention_mask(key_valid: jax.Array, query_offset: jax.Array | int, num_queries: int) -> jax.Array:
    """Causal + key-padding mask ``[B, T, S]``: query ``t`` (absolute index ``query_offset + t``) may see key
    ``s`` iff ``s <= query_offset + t`` and key ``s`` is a real token."""
    num_keys = key_valid.shape[-1]
    q_idx = query_offset + jnp.arange(num_queries)[:, None]
    causal = jnp.arange(num_keys)[None, :] <= q_idx
    return causal[None] & key_valid[:, None, :].astype(bool)


def _scores(q: jax.Array, k: jax.Array, bias: jax.Array) -> jax.Array:
    """Masked attention logits in float32: q ``[B, K, G, T, D]``, k ``[B, K, S, D]``, bias ``[B, 1, 1, T, S]``."""
    b, nk, g, t, d = q.shape
    s = q.reshape(b, nk, g * t, d) @ k.swapaxes(-1, -2)
    return s.astype(jnp.float32).reshape(b, nk, g, t, -1) * (d**-0.5) + bias


@jax.custom_vjp
def _attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(d) + bias) v per KV group; q ``[B, K, G, T, D]``, k/v ``[B, K, S, D]``."""
    return _attend_fwd(q, k, v, bias)[0]


def _attend_fwd(q, k, v, bias):
    scores = _scores(q, k, bias)
    top = jnp.max(scores, axis=-1, keepdims=True)
    unnormalized = jnp.exp(scores - top)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = (unnormalized / total).astype(v.dtype)  # as jax.nn.softmax rounds
    lse = top + jnp.log(total)
    b, nk, g, t, d = q.shape
    out = (probs.reshape(b, nk, g * t, -1) @ v).reshape(q.shape)
    return out, (q, k, v, bias, out, lse)


def _attend_bwd(res, d_out):
    """The probabilities are recomputed from q, k and the row log-sum-exp instead of being stored, and the
    softmax backward uses ``rowsum(dP * P) = rowsum(dO * O)`` (FlashAttention's identity), so no ``[T, S]``
    tensor is saved per layer and none is reduced in the backward pass."""
    q, k, v, bias, out, lse = res
    b, nk, g, t, d = q.shape
    probs = jnp.exp(_scores(q, k, bias) - lse)  # float32 [B, K, G, T, S]
    flat = lambda x: x.reshape(b, nk, g * t, -1)  # noqa: E731
    d_v = flat(probs.astype(v.dtype)).swapaxes(-1, -2) @ flat(d_out)
    d_p = (flat(d_out) @ v.swapaxes(-1, -2)).astype(jnp.float32).reshape(probs.shape)
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_s = (probs * (d_p - row) * (d**-0.5)).astype(q.dtype)
    d_q = (flat(d_s) @ k).reshape(q.shape)
    d_k = flat(d_s).swapaxes(-1, -2) @ flat(q)
    return d_q, d_k, d_v.astype(v.dtype), jnp.zeros_like(bias)


_attend.defvjp(_attend_fwd, _attend_bwd)


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q ``[B, T, nh, hd]``, k/v ``[B, S, nkv, hd]``, mask ``[B, T, S]`` -> ``[B, T, nh, hd]``.

    Heads-first batched matmuls with the query heads of a KV group folded into the query axis, the mask added as a
    bias, and a hand-written backward pass (``_attend_bwd``); on CPU this backward is ~3x faster than autodiff of
    5-D grouped einsums with a select on the scores (``benchmarks/train_step_speed.py``). Query rows with no
    visible key (left padding) return zeros, as PyTorch SDPA does, instead of NaN.
    """
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    qh = q.reshape(b, t, nkv, nh // nkv, hd).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None]  # [B, 1, 1, T, S]
    out = _attend(qh, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), bias)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, t, nh, hd)
    return out * jnp.any(mask, axis=-1)[:, :, None, None].astype(out.dtype)


# "reference": gqa_attention; "xla" / "cudnn": jax.nn.dot_product_attention with that implementation; "auto": let
# jax.nn.dot_product_attention choose (cuDNN where the shapes and dtype allow it, XLA otherwise).
ATTENTION_IMPLS = ("reference", "xla", "cudnn", "auto")


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                    implementation: str | None = None) -> jax.Array:
    """``gqa_attention`` through ``jax.nn.dot_product_attention`` (``implementation``: "xla", "cudnn" or None for
    its own choice). The mask goes in as a boolean ``[B, 1, T, S]``, so left padding, a KV cache's unwritten slots
    and extra memory keys are all expressed the same way; rows with no visible key are zeroed as in
    ``gqa_attention`` (the fused kernels would return a uniform average of the values there)."""
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=implementation)
    return out * jnp.any(mask, axis=-1)[:, :, None, None].astype(out.dtype)


def check_attention(impl: str) -> str:
    """``impl`` if it names an attention path (``ATTENTION_IMPLS``), else a ValueError naming the known ones."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; use one of {', '.join(ATTENTION_IMPLS)}")
    return impl


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, impl: str = "reference") -> jax.Array:
    """Masked grouped-query attention by the named path (``ATTENTION_IMPLS``)."""
    if check_attention(impl) == "reference":
        return gqa_attention(q, k, v, mask)
    return fused_attention(q, k, v, mask, None if impl == "auto" else impl)
