"""SHINE's hypernetwork: memory tokens + Meta LoRA (evidence pass) -> M2P -> per-example LoRA (SHINE_SPEC §1-§7).

The trainable part is one NNX module, ``Hypernetwork`` (memory tokens, Meta LoRA, M2P). The frozen base decoder
is passed in, never owned, so an optimizer built over ``Hypernetwork`` trains exactly what SHINE trains.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from shine_jax.model.config import LORA_MODULES, ModelConfig
from shine_jax.model.decoder import Decoder, param, positions_from_mask
from shine_jax.model.lora import concat_rank, init_lora
from shine_jax.model.lora import logical_axes as lora_axes
from shine_jax.model.m2p import M2PConfig, make_m2p

RESHAPE_METHODS = ("rl", "rr", "lr", "ll")
INITS = ("zeros", "normal")  # of the memory tokens and the M2P position embeddings; zeros is SHINE's


@dataclasses.dataclass(frozen=True)
class HyperConfig:
    lora_rank: int = 8  # r of the generated adapters
    metalora_rank: int = 128  # R of the Meta LoRA
    extra_metalora_rank: int = 0  # R2 of the IFT-stage "additional" Meta LoRA (0 = none)
    scale: float = 1e-3  # both generated factors are multiplied by sqrt(scale)
    method: str = "rl"
    m2p: M2PConfig = M2PConfig()
    # Symmetry breaking (not in SHINE): with zeros every memory token starts identical and M2P cannot tell them
    # apart but by RoPE, a slow start. 0.02 is the usual embedding init (HF initializer_range, our scratch base),
    # so a memory token starts like a fresh token embedding whatever the base, and the config stays base-free.
    mem_init: str = "zeros"
    mem_init_std: float = 0.02
    m2p_pos_init: str = "zeros"  # M2P layer and token position embeddings
    m2p_pos_init_std: float = 0.02  # BERT/GPT-2's position-embedding init

    def __post_init__(self):
        if self.method not in RESHAPE_METHODS:
            raise ValueError(f"LoRA reshape method {self.method!r} is unknown; use one of {', '.join(RESHAPE_METHODS)}")
        for f in ("lora_rank", "metalora_rank"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        for f in ("mem_init", "m2p_pos_init"):
            if getattr(self, f) not in INITS:
                raise ValueError(f"unknown {f} {getattr(self, f)!r}; use one of {', '.join(INITS)}")
        for f in ("mem_init_std", "m2p_pos_init_std"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")


def num_memory_tokens(model: ModelConfig, hyper: HyperConfig) -> int:
    """M = r * sum(in + out) * mean_pool / H: the memory holds exactly as many numbers as one layer's LoRA."""
    numel = model.lora_params_per_layer(hyper.lora_rank) * hyper.m2p.mean_pool_size
    if numel % model.hidden_size:
        raise ValueError(
            f"lora_rank {hyper.lora_rank} gives {numel} LoRA numbers per layer, not a multiple of hidden size "
            f"{model.hidden_size}, so the memory-token count M = {numel}/{model.hidden_size} is not an integer; "
            "choose another lora_rank"
        )
    return numel // model.hidden_size


class Hypernetwork(nnx.Module):
    """Everything SHINE trains: memory tokens ``[M, H]``, the Meta LoRA (rank R, shared) and the M2P network."""

    def __init__(self, model: ModelConfig, hyper: HyperConfig, rngs: nnx.Rngs):
        self.model_cfg, self.cfg = model, hyper
        self.num_tokens = num_memory_tokens(model, hyper)
        h = model.hidden_size
        self.mem_tokens = param(jnp.zeros((self.num_tokens, h)), ("mem_tokens", "embed"))  # official: zeros
        self.metalora = _init_metalora(model, hyper.metalora_rank, rngs)
        if hyper.extra_metalora_rank:
            self.extra_metalora = _init_metalora(model, hyper.extra_metalora_rank, rngs)
        self.m2p = make_m2p(hyper.m2p, model.num_layers, self.num_tokens, h, rngs)
        self._break_symmetry(rngs)

    def _break_symmetry(self, rngs: nnx.Rngs) -> None:
        """The ``normal`` inits, drawn after every other parameter: the Meta LoRA and M2P weights stay those of the
        official init with the same seed, so a run differs from the official one only by these tensors."""
        cfg = self.cfg
        if cfg.mem_init == "normal":
            self.mem_tokens[...] = cfg.mem_init_std * jax.random.normal(rngs.params(), self.mem_tokens.shape)
        if cfg.m2p_pos_init == "normal":
            for pe in (self.m2p.layer_pe, self.m2p.token_pe):
                pe[...] = cfg.m2p_pos_init_std * jax.random.normal(rngs.params(), pe.shape)

    def metalora_pytree(self) -> dict:
        """The Meta LoRA as a decoder LoRA pytree (``[L, 1, in, R]`` / ``[L, 1, R, out]``); an IFT additional Meta
        LoRA is concatenated along the rank axis (official ``merge_loradicts``)."""
        meta = {m: {"A": self.metalora[m]["A"][...], "B": self.metalora[m]["B"][...]} for m in LORA_MODULES}
        if self.cfg.extra_metalora_rank:
            extra = {m: {"A": self.extra_metalora[m]["A"][...], "B": self.extra_metalora[m]["B"][...]}
                     for m in LORA_MODULES}
            meta = concat_rank(meta, extra)
        return meta

    # -- the three steps ---------------------------------------------------------------------------------
    def memory_states(self, decoder: Decoder, evidence_ids: jax.Array, evidence_mask: jax.Array) -> jax.Array:
        """Evidence pass: memory tokens appended right after each row's last real token (the evidence is
        left-padded, so that is the end of the row), Meta LoRA on, residual stream of the M memory positions
        after every layer -> ``[B, L, M, H]`` float32. No logits are computed."""
        b = evidence_ids.shape[0]
        m = self.num_tokens
        x = jnp.concatenate([decoder.embed_tokens(evidence_ids),
                             jnp.broadcast_to(self.mem_tokens[...].astype(decoder.dtype), (b, m, self.model_cfg.hidden_size))], 1)
        mask = jnp.concatenate([evidence_mask.astype(bool), jnp.ones((b, m), bool)], 1)
        _, collected, _ = decoder.run_layers(x, mask, positions_from_mask(mask), (self.metalora_pytree(),),
                                             collect_last_n=m)
        return collected.astype(jnp.float32)

    def lora_from_memory(self, memory_states: jax.Array) -> dict:
        """M2P then slicing/reshaping into the per-example LoRA pytree."""
        return slice_lora(self.m2p(memory_states), self.model_cfg, self.cfg)

    def generate_lora(self, decoder: Decoder, evidence_ids: jax.Array, evidence_mask: jax.Array) -> dict:
        return self.lora_from_memory(self.memory_states(decoder, evidence_ids, evidence_mask))


def _init_metalora(model: ModelConfig, rank: int, rngs: nnx.Rngs) -> nnx.Dict:
    """SHINE's Meta-LoRA init (``lora.init_lora``, official), leading LoRA batch 1 (shared), as parameters."""
    lora = init_lora(model, rank, rngs.params)
    return nnx.Dict({m: nnx.Dict({k: param(v, lora_axes(m, k)) for k, v in ab.items()}) for m, ab in lora.items()})


def slice_lora(flat: jax.Array, model: ModelConfig, hyper: HyperConfig) -> dict:
    """``[B, L*P]`` -> LoRA pytree. Layer-major blocks of P = r * sum(in+out); inside a block q,k,v,o,gate,up,
    down; inside a module A (in*r values) then B (r*out). ``method`` picks the reshape (SHINE_SPEC §5); both
    factors are multiplied by sqrt(scale)."""
    b = flat.shape[0]
    r, nl = hyper.lora_rank, model.num_layers
    per_layer = model.lora_params_per_layer(r)
    if flat.shape[1] != nl * per_layer:
        raise ValueError(f"M2P output has {flat.shape[1]} values per example, the LoRA needs {nl * per_layer}")
    blocks = flat.reshape(b, nl, per_layer)
    root = math.sqrt(hyper.scale)
    a_rows_first = hyper.method in ("rl", "rr")  # A viewed [in, r]; else [r, in] transposed
    b_rows_first = hyper.method in ("rl", "ll")  # B viewed [r, out]; else [out, r] transposed
    out, off = {}, 0
    for m, (d_in, d_out) in model.module_dims().items():
        a = blocks[:, :, off:off + d_in * r]
        off += d_in * r
        bb = blocks[:, :, off:off + r * d_out]
        off += r * d_out
        a = a.reshape(b, nl, d_in, r) if a_rows_first else jnp.swapaxes(a.reshape(b, nl, r, d_in), -1, -2)
        bb = bb.reshape(b, nl, r, d_out) if b_rows_first else jnp.swapaxes(bb.reshape(b, nl, d_out, r), -1, -2)
        out[m] = {"A": jnp.swapaxes(a, 0, 1) * root, "B": jnp.swapaxes(bb, 0, 1) * root}  # -> [L, B, ...]
    return out
