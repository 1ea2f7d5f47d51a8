"""The fused attention path (``jax.nn.dot_product_attention``) against the reference path, and a frozen base stored
in bfloat16.

The reference (``layers.gqa_attention``: heads-first matmuls, hand-written backward) is itself checked against HF
transformers in ``test_decoder_parity.py``; here the fused path must give the same values and gradients in float32
(<= 1e-5 relative) on left-padded batches, fully masked rows, per-example LoRAs, the KV cache and extra keys.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shine_jax.base_model import BaseModel
from shine_jax.model import layers as L
from shine_jax.model.config import ModelConfig
from shine_jax.model.lora import check_lora
from tests.conftest import left_padded_batch, max_rel_err
from tests.test_lora import random_lora

CFG = ModelConfig(family="qwen3", vocab_size=80, hidden_size=48, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=12, tie_word_embeddings=False)
TOL = 1e-5


def _qkv_mask(seed=0, b=3, t=9, s=11, nh=6, nkv=2, d=16):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (b, t, nh, d))
    k = jax.random.normal(ks[1], (b, s, nkv, d))
    v = jax.random.normal(ks[2], (b, s, nkv, d))
    mask = jax.random.bernoulli(ks[3], 0.6, (b, t, s))
    mask = mask.at[0, :2].set(False)  # rows that see no key (left padding): zeros on both paths
    return q, k, v, mask


def test_fused_equals_reference_values_and_gradients():
    q, k, v, mask = _qkv_mask()
    ref = L.attend(q, k, v, mask, "reference")
    fused = L.attend(q, k, v, mask, "xla")
    assert max_rel_err(fused, ref) <= TOL
    np.testing.assert_array_equal(np.asarray(fused[0, :2]), 0.0)

    cot = jax.random.normal(jax.random.key(9), ref.shape)

    def grads(impl):
        return jax.grad(lambda q, k, v: jnp.sum(L.attend(q, k, v, mask, impl) * cot), argnums=(0, 1, 2))(q, k, v)

    for g_ref, g_fused, name in zip(grads("reference"), grads("xla"), "qkv"):
        assert max_rel_err(g_fused, g_ref) <= TOL, name


def test_unknown_implementation_is_refused():
    q, k, v, mask = _qkv_mask()
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        L.attend(q, k, v, mask, "flash")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        BaseModel.random(CFG).set_attention("flash")


def _pair(seed=3):
    ref, fused = BaseModel.random(CFG, seed=seed), BaseModel.random(CFG, seed=seed)
    fused.set_attention("xla")
    assert fused.decoder.attention == "xla" and ref.decoder.attention == "reference"
    return ref, fused


def test_decoder_logits_and_lora_gradients_match_on_a_left_padded_batch():
    ref, fused = _pair()
    ids, mask = left_padded_batch(CFG.vocab_size, [7, 2, 5], 7, seed=4)
    lora = random_lora(CFG, 4, 3, seed=5, scale=0.3)  # per-example LoRA
    check_lora(CFG, lora, 3)
    assert max_rel_err(fused.logits(ids, mask, lora=lora), ref.logits(ids, mask, lora=lora), mask) <= TOL

    labels = np.where(mask == 1, ids, -100)
    lora = jax.tree.map(jnp.asarray, lora)

    def grad_of(base):
        decoder = base.decoder
        return jax.grad(lambda lo: decoder.lm_loss(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(labels),
                                                    loras=(lo,))[0])(lora)

    g_ref, g_fused = grad_of(ref), grad_of(fused)
    for m in g_ref:
        for f in g_ref[m]:
            assert max_rel_err(g_fused[m][f], g_ref[m][f]) <= TOL, (m, f)


def test_kv_cache_prefill_and_decode_match():
    ref, fused = _pair()
    ids, mask = left_padded_batch(CFG.vocab_size, [6, 3], 6, seed=7)
    outs = []
    for base in (ref, fused):
        cache = base.decoder.init_cache(2, 10)
        first, cache = base.decoder.extend(cache, jnp.asarray(ids), jnp.asarray(mask))
        nxt = jnp.argmax(first, -1)[:, None]
        second, cache = base.decoder.extend(cache, nxt, jnp.ones_like(nxt))
        outs.append((first, second))
    for got, want in zip(outs[1], outs[0]):
        assert max_rel_err(got, want) <= TOL
    # and greedy generation with the cache agrees token for token
    np.testing.assert_array_equal(fused.generate(ids, mask, max_new_tokens=6, eos_token_id=[]),
                                  ref.generate(ids, mask, max_new_tokens=6, eos_token_id=[]))


def test_extra_keys_match():
    """Keys and values prepended to every layer with their own mask (Memory3's explicit memories)."""
    ref, fused = _pair()
    ids, mask = left_padded_batch(CFG.vocab_size, [5, 4], 5, seed=8)
    e, c = 3, CFG
    ks = jax.random.split(jax.random.key(2), 3)
    extra = (jax.random.normal(ks[0], (c.num_layers, 2, e, c.num_kv_heads, c.head_dim)),
             jax.random.normal(ks[1], (c.num_layers, 2, e, c.num_kv_heads, c.head_dim)),
             jax.random.bernoulli(ks[2], 0.7, (c.num_layers, 2, 5, e)))
    outs = []
    for base in (ref, fused):
        cache = base.decoder.init_cache(2, 8)
        logits, _ = base.decoder.extend(cache, jnp.asarray(ids), jnp.asarray(mask), extra_kv=extra)
        outs.append(logits)
    assert max_rel_err(outs[1], outs[0]) <= TOL


def test_frozen_base_in_bfloat16():
    """Stored in bfloat16, computed in float32: every float weight halves, the logits move by bfloat16 rounding
    only, and the weights are rounded once (storing again changes nothing)."""
    base = BaseModel.random(CFG, seed=3)
    ids, mask = left_padded_batch(CFG.vocab_size, [7, 4], 7, seed=4)
    want = np.asarray(base.logits(ids, mask))
    rounded = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32)), base.params())
    base.set_param_dtype("bfloat16")
    assert {str(a.dtype) for a in jax.tree.leaves(base.params())} == {"bfloat16"}
    assert base.decoder.dtype == jnp.float32
    got = np.asarray(base.logits(ids, mask))
    assert 0 < max_rel_err(got, want, mask) < 2e-2
    same = BaseModel.random(CFG, seed=3)
    same.set_params(rounded)  # float32 weights holding the bfloat16 values: the very same numbers
    assert max_rel_err(got, np.asarray(same.logits(ids, mask)), mask) <= TOL

