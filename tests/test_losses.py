"""The fast formulations of the train step against plain references: the chunked LM loss against full logits and
float64 numpy, the hand-written attention backward against autodiff of the textbook formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shine_jax.model import layers as L
from shine_jax.model.losses import causal_lm_loss, chunked_lm_loss


def numpy_nll(logits, labels):
    """HF ForCausalLMLoss in float64: slice the logits, mean NLL over labels != -100."""
    lg = logits[:, :-1].astype(np.float64)
    tg = labels[:, 1:]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    ok = tg != -100
    picked = np.take_along_axis(lg, np.where(ok, tg, 0)[..., None], -1)[..., 0]
    return ((lse - picked) * ok).sum() / max(ok.sum(), 1)


def make_case(seed, b=3, t=37, h=16, v=50):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, h)).astype(np.float32)
    w = (rng.normal(size=(h, v)) * 0.5).astype(np.float32)
    labels = rng.integers(0, v, (b, t))
    labels[0] = -100  # a row without any label
    labels[1, : t // 2] = -100  # answer-style: labels at the end
    labels[2, rng.random(t) < 0.3] = -100  # scattered; most of this row is labelled (several chunks)
    return jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(labels)


def test_causal_lm_loss_matches_float64_numpy():
    hidden, w, labels = make_case(0)
    logits = hidden @ w
    loss, n = causal_lm_loss(logits, labels)
    np.testing.assert_allclose(float(loss), numpy_nll(np.asarray(logits), np.asarray(labels)), rtol=1e-6)
    assert int(n) == int((np.asarray(labels)[:, 1:] != -100).sum())


@pytest.mark.parametrize("chunk", [4, 8, 64])
def test_chunked_lm_loss_equals_full_logits_in_value_and_gradient(chunk):
    hidden, w, labels = make_case(1)
    full = lambda x, w: causal_lm_loss(x @ w, labels)  # noqa: E731
    chunked = lambda x, w: chunked_lm_loss(x, lambda y: y @ w, labels, chunk=chunk)  # noqa: E731
    (a, na), ga = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(hidden, w)
    (b, nb), gb = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, w)
    assert int(na) == int(nb)
    np.testing.assert_allclose(float(b), float(a), rtol=1e-6)
    np.testing.assert_allclose(float(b), numpy_nll(np.asarray(hidden @ w), np.asarray(labels)), rtol=1e-5)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-7)
    # unlabelled positions get exactly no gradient
    assert not np.asarray(gb[0])[0].any()


def test_chunked_lm_loss_without_labels_is_zero():
    hidden, w, labels = make_case(2)
    loss, n = chunked_lm_loss(hidden, lambda y: y @ w, jnp.full_like(labels, -100), chunk=8)
    assert float(loss) == 0.0 and int(n) == 0


def reference_attention(q, k, v, mask):
    """Textbook grouped-query attention, differentiated by autodiff."""
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    kk, vv = jnp.repeat(k, nh // nkv, axis=2), jnp.repeat(v, nh // nkv, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, kk) / np.sqrt(hd)
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(jnp.isnan(probs), 0.0, probs)  # rows with no visible key -> zeros
    return jnp.einsum("bhts,bshd->bthd", probs, vv)


@pytest.mark.parametrize("heads,kv_heads,offset", [(4, 4, 0), (4, 2, 0), (6, 2, 5)])
def test_attention_matches_autodiff_reference_in_value_and_gradient(heads, kv_heads, offset):
    rng = np.random.default_rng(heads + kv_heads + offset)
    b, t, hd = 3, 11, 8
    s = t + offset  # with an offset the keys are a cache longer than the queries
    q = jnp.asarray(rng.normal(size=(b, t, heads, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, kv_heads, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, kv_heads, hd)), jnp.float32)
    valid = np.ones((b, s), bool)
    valid[1, : offset + 4] = False  # left padding: the first queries of row 1 see no key
    mask = L.attention_mask(jnp.asarray(valid), offset, t)
    w = jnp.asarray(rng.normal(size=(b, t, heads, hd)), jnp.float32)
    ours = lambda q, k, v: jnp.sum(L.gqa_attention(q, k, v, mask) * w)  # noqa: E731
    ref = lambda q, k, v: jnp.sum(reference_attention(q, k, v, mask) * w)  # noqa: E731
    np.testing.assert_allclose(np.asarray(L.gqa_attention(q, k, v, mask)),
                               np.asarray(reference_attention(q, k, v, mask)), atol=2e-6)
    assert not np.asarray(L.gqa_attention(q, k, v, mask))[1, :4].any()
    for x, y in zip(jax.grad(ref, argnums=(0, 1, 2))(q, k, v), jax.grad(ours, argnums=(0, 1, 2))(q, k, v)):
        assert np.isfinite(np.asarray(y)).all()
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-5)
