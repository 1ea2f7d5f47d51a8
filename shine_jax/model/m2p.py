"""M2P ("memory to parameters") networks (SHINE_SPEC §4).

``M2PTransformer`` is the paper's network: learned layer/token position embeddings, then post-LN encoder layers
(PyTorch ``nn.TransformerEncoderLayer`` semantics: exact GELU, FFN with biases, LayerNorm eps 1e-5) whose
attention alternates between the layer axis (sequences of length L) and the memory-token axis (length M).
``M2PLinear`` is the ablation of the same section (per-token linear layers, bias-free by default, GELU after each,
the last included; the ``gate`` variant doubles the last layer and returns ``sigmoid(first half) * second half``).
Weights are stored ``[in, out]``; the official checkpoint stores ``[out, in]`` (see ``convert/official.py``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from shine_jax.model.decoder import param
from shine_jax.model.layers import linear

M2P_TYPES = ("transformer", "linear", "lineargate")
MEMORY_NORMS = ("none", "rmsnorm", "layernorm")


@dataclasses.dataclass(frozen=True)
class M2PConfig:
    type: str = "transformer"
    num_layers: int = 4
    num_heads: int = 8
    ffn_mult: int = 2  # dim_feedforward = ffn_mult * H (the official configs use 2H)
    layer_transformer_first: bool = True
    layer_norm_eps: float = 1e-5
    mean_pool_size: int = 1
    linear_hidden_dim: int | None = None  # linear/lineargate: width of the inner layers (None = H)
    linear_bias: bool = False  # linear/lineargate: Linear layers with a bias
    # Not in SHINE: normalise each memory state (per layer, per token) before the position embeddings are added.
    # Residual-stream scales grow with depth, so without it the deep layers dominate M2P's first attention.
    memory_norm: str = "none"

    def __post_init__(self):
        if self.type not in M2P_TYPES:
            raise ValueError(f"M2P type {self.type!r} is unknown; use one of {', '.join(M2P_TYPES)}")
        if self.memory_norm not in MEMORY_NORMS:
            raise ValueError(f"unknown memory_norm {self.memory_norm!r}; use one of {', '.join(MEMORY_NORMS)}")
        if self.num_layers < 1:
            raise ValueError(f"M2P num_layers must be >= 1, got {self.num_layers}")


def _uniform(key, shape, bound):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def layer_norm(x, w, b, eps):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * w + b


def memory_norm(x, kind: str, scale, eps: float):
    """The optional input normalisation over the hidden axis; only a scale is learnt, since the position
    embeddings added right after it already are a learnt offset."""
    if kind == "rmsnorm":
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps) * scale
    return layer_norm(x, scale, 0.0, eps)


class PositionInput(nnx.Module):
    """What both M2P variants start with: the (optionally normalised) memory states plus learned layer and token
    position embeddings (zeros, as the official init; ``Hypernetwork`` may redraw them)."""

    def _init_input(self, cfg: M2PConfig, num_layers: int, num_tokens: int, hidden: int):
        self.layer_pe = param(jnp.zeros((num_layers, hidden)), ("layers", "m2p_embed"))
        self.token_pe = param(jnp.zeros((num_tokens, hidden)), ("mem_tokens", "m2p_embed"))
        if cfg.memory_norm != "none":  # "norm" in the name: the no-weight-decay group, like the LayerNorms
            self.mem_norm_scale = param(jnp.ones((hidden,)), ("m2p_embed",))

    def _input(self, memory_states: jax.Array) -> jax.Array:
        x = memory_states
        if self.cfg.memory_norm != "none":
            x = memory_norm(x, self.cfg.memory_norm, self.mem_norm_scale[...], self.cfg.layer_norm_eps)
        return x + self.layer_pe[...][None, :, None, :] + self.token_pe[...][None, None, :, :]


class EncoderLayer(nnx.Module):
    """Post-LN transformer encoder layer: ``x = LN1(x + MHA(x)); x = LN2(x + FFN(x))``, no mask."""

    def __init__(self, d: int, heads: int, ffn: int, eps: float, rngs: nnx.Rngs):
        if d % heads:
            raise ValueError(f"M2P num_heads ({heads}) must divide the hidden size ({d})")
        self.heads, self.eps = heads, eps
        k = rngs.params
        # PyTorch defaults: xavier-uniform in_proj, zero attention biases, kaiming-uniform(a=sqrt 5) linears
        self.in_proj = param(_uniform(k(), (d, 3 * d), math.sqrt(6.0 / (4 * d))), ("m2p_embed", "m2p_qkv"))
        self.in_bias = param(jnp.zeros((3 * d,)), ("m2p_qkv",))
        self.out_proj = param(_uniform(k(), (d, d), 1 / math.sqrt(d)), ("m2p_qkv", "m2p_embed"))
        self.out_bias = param(jnp.zeros((d,)), ("m2p_embed",))
        self.linear1 = param(_uniform(k(), (d, ffn), 1 / math.sqrt(d)), ("m2p_embed", "m2p_mlp"))
        self.bias1 = param(_uniform(k(), (ffn,), 1 / math.sqrt(d)), ("m2p_mlp",))
        self.linear2 = param(_uniform(k(), (ffn, d), 1 / math.sqrt(ffn)), ("m2p_mlp", "m2p_embed"))
        self.bias2 = param(_uniform(k(), (d,), 1 / math.sqrt(ffn)), ("m2p_embed",))
        self.norm1_scale = param(jnp.ones((d,)), ("m2p_embed",))
        self.norm1_bias = param(jnp.zeros((d,)), ("m2p_embed",))
        self.norm2_scale = param(jnp.ones((d,)), ("m2p_embed",))
        self.norm2_bias = param(jnp.zeros((d,)), ("m2p_embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x ``[N, S, d]`` -> ``[N, S, d]``."""
        n, s, d = x.shape
        hd = d // self.heads
        qkv = linear(x, self.in_proj[...]) + self.in_bias[...]
        q, k, v = (t.reshape(n, s, self.heads, hd) for t in jnp.split(qkv, 3, axis=-1))
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(hd)
        attn = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v).reshape(n, s, d)
        x = layer_norm(x + linear(attn, self.out_proj[...]) + self.out_bias[...], self.norm1_scale[...],
                       self.norm1_bias[...], self.eps)
        ff = jax.nn.gelu(linear(x, self.linear1[...]) + self.bias1[...], approximate=False)
        ff = linear(ff, self.linear2[...]) + self.bias2[...]
        return layer_norm(x + ff, self.norm2_scale[...], self.norm2_bias[...], self.eps)


class M2PTransformer(PositionInput):
    def __init__(self, cfg: M2PConfig, num_layers: int, num_tokens: int, hidden: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self._init_input(cfg, num_layers, num_tokens, hidden)
        self.layers = nnx.List([EncoderLayer(hidden, cfg.num_heads, cfg.ffn_mult * hidden, cfg.layer_norm_eps, rngs)
                                for _ in range(cfg.num_layers)])

    def attends_across_layers(self, i: int) -> bool:
        return (i % 2 == 0) == self.cfg.layer_transformer_first

    def __call__(self, memory_states: jax.Array, return_intermediates: bool = False):
        """memory_states ``[B, L, M, H]`` -> flat ``[B, L*M'*H]`` (M' = M / mean_pool_size)."""
        b, nl, m, h = memory_states.shape
        x = self._input(memory_states)
        outs = [x]
        for i, layer in enumerate(self.layers):
            if self.attends_across_layers(i):
                y = layer(jnp.swapaxes(x, 1, 2).reshape(b * m, nl, h))
                x = jnp.swapaxes(y.reshape(b, m, nl, h), 1, 2)
            else:
                x = layer(x.reshape(b * nl, m, h)).reshape(b, nl, m, h)
            outs.append(x)
        flat = mean_pool_and_flatten(x, self.cfg.mean_pool_size)
        return (flat, outs) if return_intermediates else flat


class M2PLinear(PositionInput):
    """The ``linear`` / ``lineargate`` ablations: per-token bias-free linears, GELU after each."""

    def __init__(self, cfg: M2PConfig, num_layers: int, num_tokens: int, hidden: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self._init_input(cfg, num_layers, num_tokens, hidden)
        inner = cfg.linear_hidden_dim or hidden
        dims = [hidden] + [inner] * (cfg.num_layers - 1) + [2 * hidden if cfg.type == "lineargate" else hidden]
        self.weights = nnx.List([param(_uniform(rngs.params(), (a, b), 1 / math.sqrt(a)), ("m2p_embed", "m2p_mlp"))
                                 for a, b in zip(dims[:-1], dims[1:])])
        self.biases = nnx.List([param(_uniform(rngs.params(), (b,), 1 / math.sqrt(a)), ("m2p_mlp",))
                                for a, b in zip(dims[:-1], dims[1:])] if cfg.linear_bias else [])

    def __call__(self, memory_states: jax.Array, return_intermediates: bool = False):
        x = self._input(memory_states)
        outs = [x]
        for i, w in enumerate(self.weights):
            x = linear(x, w[...]) + (self.biases[i][...] if self.cfg.linear_bias else 0.0)
            x = jax.nn.gelu(x, approximate=False)
            outs.append(x)
        if self.cfg.type == "lineargate":
            gate, value = jnp.split(x, 2, axis=-1)  # the official chunk order: gate first
            x = jax.nn.sigmoid(gate) * value
        flat = mean_pool_and_flatten(x, self.cfg.mean_pool_size)
        return (flat, outs) if return_intermediates else flat


def mean_pool_and_flatten(x: jax.Array, pool: int) -> jax.Array:
    """Average strided groups of memory tokens (official ``unflatten(2, (pool, M/pool)).mean(2)``), then flatten
    row-major over (layer, token, hidden)."""
    b, nl, m, h = x.shape
    if pool > 1:
        x = x.reshape(b, nl, pool, m // pool, h).mean(axis=2)
    return x.reshape(b, -1)


def make_m2p(cfg: M2PConfig, num_layers: int, num_tokens: int, hidden: int, rngs: nnx.Rngs):
    cls = M2PTransformer if cfg.type == "transformer" else M2PLinear
    return cls(cfg, num_layers, num_tokens, hidden, rngs)
