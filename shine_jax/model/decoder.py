"""Qwen3 / LLaMA-family decoder as a Flax NNX module with stacked, scanned layers.

The decoder knows nothing of SHINE. It accepts any number of LoRA pytrees (``shine_jax.model.lora``), each
either shared (LoRA batch 1) or per-example, and applies all of them to the seven projections of every layer.
Weights are stored ``[in, out]`` (``x @ W``) with a leading ``layers`` axis so one ``lax.scan`` runs the stack
and compile time does not grow with depth. Every parameter carries its logical axis names in the
``logical_axes`` metadata; ``shine_jax.sharding`` turns them into mesh shardings (resolved by us rather than by
NNX eager sharding so a model can be built with or without a mesh).

Attention can also read *extra keys/values* (``extra_kv``, off by default): keys and values that are no tokens of
the sequence, prepended to each layer's keys with their own mask (Memory3's explicit memories, ``eval.memory3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from shine_jax import sharding as shd
from shine_jax.model import layers as L
from shine_jax.model.config import ModelConfig
from shine_jax.model.lora import apply_loras
from shine_jax.model.losses import chunked_lm_loss

AXES_KEY = "logical_axes"


def param(value: jax.Array, axes: tuple[str | None, ...]) -> nnx.Param:
    """A parameter carrying its logical axes (``AXES_KEY``), which ``sharding`` maps onto the mesh."""
    return nnx.Param(value, **{AXES_KEY: axes})


class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, param_dtype=jnp.float32, init_std: float = 0.02):
        n, h = cfg.num_layers, cfg.hidden_size

        def dense(shape, axes):
            w = init_std * jax.random.normal(rngs.params(), (n, *shape), param_dtype)
            return param(w, ("layers", *axes))

        def ones(size, axis):
            return param(jnp.ones((n, size), param_dtype), ("layers", axis))

        dims = cfg.module_dims()
        self.attn_norm = ones(h, "norm")
        self.q = dense(dims["q"], ("embed", "heads"))
        self.k = dense(dims["k"], ("embed", "kv_heads"))
        self.v = dense(dims["v"], ("embed", "kv_heads"))
        self.o = dense(dims["o"], ("heads", "embed"))
        if cfg.qk_norm:
            self.q_norm = ones(cfg.head_dim, "head_dim")
            self.k_norm = ones(cfg.head_dim, "head_dim")
        self.mlp_norm = ones(h, "norm")
        self.gate = dense(dims["gate"], ("embed", "mlp"))
        self.up = dense(dims["up"], ("embed", "mlp"))
        self.down = dense(dims["down"], ("mlp", "embed"))

    def weights(self) -> dict[str, jax.Array]:
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


def attention_qkv(cfg: ModelConfig, w: dict, x: jax.Array,
                  loras: Sequence[dict] = ()) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A layer's queries ``[B, T, nh, hd]``, keys and values ``[B, T, nkv, hd]`` of its input ``x`` (the residual
    stream), before RoPE: attention norm, projections (+ LoRA deltas), q/k norm."""
    b, t, _ = x.shape
    h = L.rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    q = apply_loras(h @ w["q"], h, loras, "q").reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = apply_loras(h @ w["k"], h, loras, "k").reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = apply_loras(h @ w["v"], h, loras, "v").reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = L.rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
        k = L.rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
    return q, k, v


def layer_forward(cfg: ModelConfig, w: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
                  loras: Sequence[dict], kv: tuple[jax.Array, jax.Array] | None, write_index,
                  dtype, extra: tuple[jax.Array, ...] | None = None, attention: str = "reference",
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """One pre-norm decoder layer. LoRA deltas are added to the projection outputs before q/k norm and RoPE.

    ``kv``: this layer's cache ``([B, S, nkv, hd], [B, S, nkv, hd])``; the new keys/values are written at
    ``write_index`` and attention runs over the whole cache (``mask`` hides what is not written yet).
    ``extra``: keys (RoPE already applied) and values ``[B, E, nkv, hd]`` put before the sequence's keys, and
    ``[B, T, E]``: which of them each query sees. ``attention``: the path (``layers.ATTENTION_IMPLS``).
    """
    b, t, _ = x.shape
    w = {k: v.astype(dtype) for k, v in w.items()}

    def proj(inp, name):
        return apply_loras(inp @ w[name], inp, loras, name)

    q, k, v = attention_qkv(cfg, w, x, loras)
    q, k = L.apply_rope(q, cos, sin), L.apply_rope(k, cos, sin)
    if kv is not None:
        k_cache = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, write_index, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, write_index, 0, 0))
        kv = (k_cache, v_cache)
        k, v = k_cache.astype(dtype), v_cache.astype(dtype)
    if extra is not None:
        k = jnp.concatenate([extra[0].astype(dtype), k], axis=1)
        v = jnp.concatenate([extra[1].astype(dtype), v], axis=1)
        mask = jnp.concatenate([extra[2], mask], axis=-1)
    attn = L.attend(q, k, v, mask, attention).reshape(b, t, cfg.q_dim)
    x = x + proj(attn, "o")

    h = L.rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    act = jax.nn.silu(proj(h, "gate")) * proj(h, "up")
    x = x + proj(act, "down")
    return x, kv


class Decoder(nnx.Module):
    """Embedding -> scanned decoder layers -> final RMSNorm -> LM head (tied or untied)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32,
                 remat: bool = False, init_std: float = 0.02, attention: str = "reference"):
        self.cfg = cfg
        self.dtype = dtype
        self.remat = remat
        self.attention = L.check_attention(attention)  # static: which attention path the layers run (layers.ATTENTION_IMPLS)
        h = cfg.hidden_size
        self.embed = param(init_std * jax.random.normal(rngs.params(), (cfg.vocab_size, h), param_dtype),
                            ("vocab", "embed"))
        self.layers = DecoderLayers(cfg, rngs, param_dtype, init_std)
        self.final_norm = param(jnp.ones((h,), param_dtype), ("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = param(init_std * jax.random.normal(rngs.params(), (h, cfg.vocab_size), param_dtype),
                                  ("embed", "vocab"))

    # -- pieces -------------------------------------------------------------------------------------------
    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)

    def project_logits(self, hidden: jax.Array) -> jax.Array:
        hidden = L.rms_norm(hidden, self.final_norm[...], self.cfg.rms_norm_eps)
        if self.cfg.tie_word_embeddings:
            logits = hidden @ self.embed[...].astype(hidden.dtype).T
        else:
            logits = hidden @ self.lm_head[...].astype(hidden.dtype)
        return logits.astype(jnp.float32)

    def run_layers(self, x: jax.Array, key_valid: jax.Array, positions: jax.Array, loras: Sequence[dict] = (),
                   cache: dict | None = None, collect_last_n: int = 0,
                   extra_kv: tuple[jax.Array, ...] | None = None) -> tuple[jax.Array, Any, dict | None]:
        """Run the scanned stack.

        x ``[B, T, H]``; ``key_valid`` ``[B, S]`` marks real keys (S = T without a cache, the cache length with
        one); ``positions`` ``[B, T]`` RoPE positions. Returns the final residual stream, the last
        ``collect_last_n`` positions of the residual stream after every layer (``[B, L, n, H]`` or None), and
        the updated cache. ``extra_kv``: keys (rotated) and values ``[L, B, E, nkv, hd]`` and a mask
        ``[L, B, T, E]`` that every layer's attention reads before the sequence (see ``layer_forward``).
        """
        cfg = self.cfg
        b, t, _ = x.shape
        cos, sin = L.rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        write_index = 0 if cache is None else cache["index"]
        mask = L.attention_mask(key_valid, write_index, t)
        loras = tuple(loras)

        def body(carry, xs):
            w, layer_loras, kv, extra = xs
            carry = shd.constrain(carry, ("batch", "length", None))
            out, kv = layer_forward(cfg, w, carry, cos, sin, mask, layer_loras, kv, write_index, self.dtype, extra,
                                    self.attention)
            out = shd.constrain(out, ("batch", "length", None))
            collected = out[:, t - collect_last_n:] if collect_last_n else None
            return out, (collected, kv)

        if self.remat:
            body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
        kv_in = None if cache is None else (cache["k"], cache["v"])
        x, (collected, kv_out) = jax.lax.scan(body, x, (self.layers.weights(), loras, kv_in, extra_kv))
        if collected is not None:
            collected = jnp.swapaxes(collected, 0, 1)  # [L, B, n, H] -> [B, L, n, H]
        new_cache = None
        if cache is not None:
            new_cache = dict(cache, k=kv_out[0], v=kv_out[1], index=cache["index"] + t)
        return x, collected, new_cache

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array, positions: jax.Array | None = None,
                      loras: Sequence[dict] = ()) -> jax.Array:
        """The last residual stream ``[B, T, H]`` (before the final norm) of a left- (or right-) padded batch."""
        if positions is None:
            positions = positions_from_mask(attention_mask)
        x = self.embed_tokens(input_ids)
        x, _, _ = self.run_layers(x, attention_mask.astype(bool), positions, loras)
        return x

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, positions: jax.Array | None = None,
                 loras: Sequence[dict] = ()) -> jax.Array:
        """Logits ``[B, T, V]`` (float32) for a left- (or right-) padded batch."""
        return self.project_logits(self.hidden_states(input_ids, attention_mask, positions, loras))

    def lm_loss(self, input_ids: jax.Array, attention_mask: jax.Array, labels: jax.Array,
                loras: Sequence[dict] = ()) -> tuple[jax.Array, jax.Array]:
        """Next-token NLL over ``labels`` != -100 (HF shift), projecting only the labelled positions onto the
        vocabulary (``losses.chunked_lm_loss``). Returns (mean loss, labelled positions)."""
        x = self.hidden_states(input_ids, attention_mask, loras=loras)
        return chunked_lm_loss(x, self.project_logits, labels)

    # -- KV cache -----------------------------------------------------------------------------------------
    def init_cache(self, batch: int, length: int, dtype=None) -> dict:
        cfg = self.cfg
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        dtype = dtype or self.dtype
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "valid": jnp.zeros((batch, length), bool),
            "index": jnp.zeros((), jnp.int32),
            "next_pos": jnp.zeros((batch,), jnp.int32),
        }

    def extend(self, cache: dict, input_ids: jax.Array, attention_mask: jax.Array, loras: Sequence[dict] = (),
               extra_kv: tuple[jax.Array, ...] | None = None) -> tuple[jax.Array, dict]:
        """Append a chunk (prompt prefill or one new token per row) to the cache; returns its last logits.
        ``extra_kv``: keys/values the chunk's attention reads besides the cache (``run_layers``)."""
        mask = attention_mask.astype(bool)
        valid = jax.lax.dynamic_update_slice(cache["valid"], mask, (0, cache["index"]))
        positions = cache["next_pos"][:, None] + jnp.cumsum(mask, axis=1) - 1
        positions = jnp.maximum(positions, 0)
        cache = dict(cache, valid=valid, next_pos=cache["next_pos"] + mask.sum(axis=1).astype(jnp.int32))
        x = self.embed_tokens(input_ids)
        x, _, cache = self.run_layers(x, valid, positions, loras, cache=cache, extra_kv=extra_kv)
        return self.project_logits(x[:, -1:])[:, 0], cache


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """RoPE positions 0..n-1 over the real tokens of each row (padding gets 0; it is never attended to)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
