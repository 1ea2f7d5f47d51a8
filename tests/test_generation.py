"""KV-cache generation equals step-by-step argmax of the full forward (left-padded batch, with LoRA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shine_jax.base_model import BaseModel
from shine_jax.model.config import ModelConfig
from shine_jax.model.sampler import sample_token
from tests.conftest import left_padded_batch
from tests.test_lora import random_lora

CFG = ModelConfig(family="qwen3", vocab_size=80, hidden_size=48, intermediate_size=96, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=12, tie_word_embeddings=False)


def reference_greedy(base, ids, mask, steps, lora):
    """Recompute the full forward over the growing sequence at every step and take the argmax."""
    ids, mask, out = ids.copy(), mask.copy(), []
    for _ in range(steps):
        nxt = np.asarray(base.logits(ids, mask, lora=lora))[:, -1].argmax(-1)
        out.append(nxt)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones_like(nxt)[:, None]], 1)
    return np.stack(out, 1)


@pytest.mark.parametrize("with_lora", [False, True])
def test_cached_greedy_equals_full_forward_argmax(with_lora):
    base = BaseModel.random(CFG, seed=3)
    ids, mask = left_padded_batch(CFG.vocab_size, [7, 2, 5], 7, seed=4)
    lora = random_lora(CFG, 4, 3, seed=5, scale=0.3) if with_lora else None
    got = base.generate(ids, mask, max_new_tokens=8, lora=lora, eos_token_id=[])
    ref = reference_greedy(base, ids, mask, 8, lora)
    np.testing.assert_array_equal(got, ref)


def test_eos_stops_a_row_and_pads_the_rest():
    base = BaseModel.random(CFG, seed=3)
    ids, mask = left_padded_batch(CFG.vocab_size, [7, 2, 5], 7, seed=4)
    free = base.generate(ids, mask, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, 2])
    got = base.generate(ids, mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=0)
    first = np.argmax(free[0] == eos)
    np.testing.assert_array_equal(got[0, :first + 1], free[0, :first + 1])
    assert (got[0, first + 1:] == 0).all()


def test_sampling():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 50)), jnp.float32)
    key = jax.random.key(0)
    greedy = np.asarray(logits.argmax(-1))
    np.testing.assert_array_equal(sample_token(logits, key, jnp.float32(0.0), jnp.float32(1.0)), greedy)
    # a tiny nucleus keeps only the most likely token, whatever the temperature
    np.testing.assert_array_equal(sample_token(logits, key, jnp.float32(5.0), jnp.float32(1e-6)), greedy)
    # with the full nucleus at high temperature, draws spread over many tokens and follow the seed
    draws = np.stack([np.asarray(sample_token(logits, jax.random.key(s), jnp.float32(5.0), jnp.float32(1.0)))
                      for s in range(40)])
    assert len(np.unique(draws[:, 0])) > 5
    again = np.asarray(sample_token(logits, jax.random.key(7), jnp.float32(5.0), jnp.float32(1.0)))
    np.testing.assert_array_equal(again, draws[7])
    # top-p: every draw lies inside the nucleus of its row
    probs = np.asarray(jax.nn.softmax(logits / 1.0, axis=-1))
    order = np.argsort(-probs, axis=-1)
    for s in range(20):
        tok = np.asarray(sample_token(logits, jax.random.key(s), jnp.float32(1.0), jnp.float32(0.5)))
        for r in range(4):
            rank = int(np.where(order[r] == tok[r])[0][0])
            mass_before = probs[r, order[r, :rank]].sum()
            assert mass_before < 0.5


def test_generate_sampling_runs_and_is_seeded():
    base = BaseModel.random(CFG, seed=3)
    ids, mask = left_padded_batch(CFG.vocab_size, [4, 3], 4, seed=1)
    a = base.generate(ids, mask, 5, temperature=1.0, top_p=0.9, seed=1, eos_token_id=[])
    b = base.generate(ids, mask, 5, temperature=1.0, top_p=0.9, seed=1, eos_token_id=[])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="top_p"):
        base.generate(ids, mask, 5, top_p=0.0)
