"""Sampling: how a decoder's next token is chosen (greedy, or temperature + top-p) and the KV-cache decoding loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def sample_token(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Greedy when ``temperature == 0``; otherwise temperature + nucleus (top-p) sampling. logits ``[B, V]``."""
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # always keeps the most likely token
    cutoff = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    sampled = jax.random.categorical(key, jnp.where(scaled < cutoff, -jnp.inf, scaled), axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0, 10))
def generate(graphdef, state, ids, mask, loras, key, temperature, top_p, eos, pad, max_new_tokens):
    """KV-cache decoding of a left-padded batch with the decoder ``nnx.merge(graphdef, state)``: ``[B,
    max_new_tokens]`` new ids, ``pad`` after a row's end (any id of ``eos``). ``BaseModel.generate`` checks the
    arguments and places the batch."""
    model = nnx.merge(graphdef, state)
    b, t = ids.shape
    cache = model.init_cache(b, t + max_new_tokens)
    logits, cache = model.extend(cache, ids, mask, loras)

    keys = jax.random.split(key, max_new_tokens)

    def step(carry):  # one new token per row; finished rows get pad and are masked out of the cache
        i, logits, cache, done, out = carry
        tok = sample_token(logits, keys[i], temperature, top_p)
        tok = jnp.where(done, pad, tok)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        new_done = done | jnp.isin(tok, eos)
        logits, cache = model.extend(cache, tok[:, None], (~done)[:, None].astype(jnp.int32), loras)
        return i + 1, logits, cache, new_done, out

    # a while loop, not a scan: generation stops as soon as every row has ended (short answers end early)
    init = (jnp.int32(0), logits, cache, jnp.zeros((b,), bool), jnp.full((b, max_new_tokens), pad, jnp.int32))
    _, _, _, _, out = jax.lax.while_loop(lambda c: (c[0] < max_new_tokens) & ~jnp.all(c[3]), step, init)
    return out
