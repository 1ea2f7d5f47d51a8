"""The M2P ablation variants (SHINE_SPEC §4) and the attention-axis switch, against float64 numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shine_jax.model import m2p as m2p_lib
from shine_jax.model.layers import linear
from shine_jax.model.m2p import M2PConfig, make_m2p
from tests.conftest import max_rel_err


def gelu(x):
    """Exact (erf) GELU in float64."""
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize("kind,bias", [("linear", False), ("lineargate", False), ("linear", True)])
def test_linear_variants(kind, bias):
    cfg = M2PConfig(type=kind, num_layers=3, linear_hidden_dim=24, linear_bias=bias)
    net = make_m2p(cfg, num_layers=2, num_tokens=5, hidden=16, rngs=nnx.Rngs(0))
    p = nnx.to_pure_dict(nnx.state(net))
    rng = np.random.default_rng(0)
    p["layer_pe"] = rng.normal(size=p["layer_pe"].shape)
    p["token_pe"] = rng.normal(size=p["token_pe"].shape)
    net = nnx.merge(nnx.graphdef(net), jax_tree(p))
    x = rng.normal(size=(3, 2, 5, 16))
    got = np.asarray(net(jnp.asarray(x, jnp.float32)))
    h = x + np.asarray(p["layer_pe"])[None, :, None] + np.asarray(p["token_pe"])[None, None]
    for i in range(3):
        h = h @ np.asarray(p["weights"][i], np.float64)
        if bias:
            h = h + np.asarray(p["biases"][i])
        h = gelu(h)
    if kind == "lineargate":
        gate, value = np.split(h, 2, axis=-1)
        h = value / (1 + np.exp(-gate))
    assert got.shape == (3, 2 * 5 * 16)
    assert max_rel_err(got, h.reshape(3, -1)) <= 1e-5


def jax_tree(p):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)


@pytest.mark.parametrize("layer_first", [True, False])
def test_attention_axis_alternation(layer_first):
    """Layer i mixes across the layer axis iff (i even) == layer_transformer_first: perturbing one layer entry
    changes the other layers' outputs of the same token after a layer-axis layer, and not otherwise."""
    cfg = M2PConfig(num_layers=1, num_heads=2, layer_transformer_first=layer_first)
    net = make_m2p(cfg, num_layers=3, num_tokens=4, hidden=8, rngs=nnx.Rngs(1))
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 8)).astype(np.float32)
    y = x.copy()
    y[0, 0, 0] += 1.0  # layer 0, token 0
    a = np.asarray(net(jnp.asarray(x))).reshape(1, 3, 4, 8)
    b = np.asarray(net(jnp.asarray(y))).reshape(1, 3, 4, 8)
    other_layer_same_token = np.abs(a[0, 1, 0] - b[0, 1, 0]).max()
    same_layer_other_token = np.abs(a[0, 0, 1] - b[0, 0, 1]).max()
    if layer_first:
        assert other_layer_same_token > 1e-4 and same_layer_other_token < 1e-6
    else:
        assert other_layer_same_token < 1e-6 and same_layer_other_token > 1e-4


def test_linear_gradients_match_numpy():
    """``layers.linear``'s hand-written backward pass: dx = g w^T, dw = x^T g (float64 numpy), for a 3-D input."""
    rng = np.random.default_rng(2)
    x, w, g = (rng.normal(size=s).astype(np.float32) for s in ((3, 4, 6), (6, 5), (3, 4, 5)))
    dx, dw = jax.grad(lambda a, b: jnp.sum(linear(a, b) * g), argnums=(0, 1))(x, w)
    x64, w64, g64 = (v.astype(np.float64) for v in (x, w, g))
    assert max_rel_err(dx, g64 @ w64.T) <= 1e-6
    assert max_rel_err(dw, x64.reshape(-1, 6).T @ g64.reshape(-1, 5)) <= 1e-6


@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_m2p_gradients_equal_autodiff_of_plain_matmuls(kind, monkeypatch):
    """The whole M2P's parameter gradients with ``linear`` equal autodiff through plain ``x @ w`` (float32)."""
    cfg = M2PConfig(type=kind, num_layers=2, num_heads=2)
    net = make_m2p(cfg, num_layers=3, num_tokens=4, hidden=8, rngs=nnx.Rngs(0))
    graph, params = nnx.split(net)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 4, 8)), jnp.float32)

    def grads():
        return jax.grad(lambda p: jnp.sum(jnp.sin(nnx.merge(graph, p)(x))))(params)

    ours = grads()
    monkeypatch.setattr(m2p_lib, "linear", lambda a, b: a @ b)
    plain = grads()
    for got, want in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        assert max_rel_err(got, want) <= 1e-5
