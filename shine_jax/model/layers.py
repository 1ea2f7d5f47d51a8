"""Pure building blocks of the decoder: RMSNorm, rotary embeddings, masked grouped-query attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """``w * x / sqrt(mean(x^2) + eps)``, statistics in float32 (as HF Qwen3/LLaMA do)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


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


def gqa_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q ``[B, T, nh, hd]``, k/v ``[B, S, nkv, hd]``, mask ``[B, T, S]`` -> ``[B, T, nh, hd]``.

    Query rows with no visible key (left padding) return zeros, as PyTorch SDPA does, instead of NaN.
    """
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    qg = q.reshape(b, t, nkv, nh // nkv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) * (hd**-0.5)
    m = mask[:, None, None, :, :]
    scores = jnp.where(m, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(jnp.any(m, axis=-1, keepdims=True), probs, 0.0).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, nh, hd)
