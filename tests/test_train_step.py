"""Unit behaviour of the train step and checkpointing: NaN steps skipped and counted, NaN never saved, per-group
clipping and schedule; bf16 compute, a frozen base stored in bf16, rematerialisation and the fused attention path
agree with the float32 step."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from shine_jax.train import checkpoint as ckpt
from shine_jax.train import optimizer as optim
from shine_jax.train.step import init_state, make_train_step

OPT = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=2, weight_decay=0.0, clip_norm=1.0, b1=0.9, b2=0.999,
                                     eps=1e-8))


def quadratic(params, frozen, batch):
    loss = jnp.mean((params["w"] * batch["x"] - batch["y"]) ** 2)
    return loss, jnp.asarray(batch["x"].size, jnp.int32)


def test_non_finite_steps_are_skipped_and_counted():
    params = {"w": jnp.ones((3,))}
    tx = optim.make_optimizer(OPT, 10, {"w": "decay"})
    step = jax.jit(make_train_step(quadratic, tx))
    state = init_state(params, tx)
    good = {"x": jnp.ones((1, 2, 3)), "y": jnp.zeros((1, 2, 3))}
    state, m = step(state, None, good)
    state, m = step(state, None, good)
    before = np.asarray(state["params"]["w"])
    bad = {"x": jnp.full((1, 2, 3), jnp.nan), "y": jnp.zeros((1, 2, 3))}
    state, m = step(state, None, bad)
    assert int(m["skipped"]) == 1 and int(state["skipped"]) == 1 and int(state["step"]) == 3
    np.testing.assert_array_equal(np.asarray(state["params"]["w"]), before)
    state, m = step(state, None, good)
    assert int(state["skipped"]) == 1 and not np.array_equal(np.asarray(state["params"]["w"]), before)


def test_gradient_accumulation_averages_micro_batches():
    params = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    tx = optax.sgd(1.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2, 3)), jnp.float32)
    y = jnp.zeros_like(x)
    s4, m4 = jax.jit(make_train_step(quadratic, tx))(init_state(params, tx), None, {"x": x, "y": y})
    one = {"x": x.reshape(1, 8, 3), "y": y.reshape(1, 8, 3)}
    s1, m1 = jax.jit(make_train_step(quadratic, tx))(init_state(params, tx), None, one)
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-6)
    # the update itself: 4 micro-batches of 2 must move the parameters exactly as one batch of 8 (the mean
    # gradient), which a summed or last-micro-batch gradient would not
    np.testing.assert_allclose(np.asarray(s4["params"]["w"]), np.asarray(s1["params"]["w"]), rtol=1e-6)
    w, xs = np.asarray(params["w"], np.float64), np.asarray(x, np.float64)
    grad = 2 * w * np.mean(xs**2, axis=(0, 1)) / 3  # d/dw_k of the mean of (w_k x)^2 over 24 values, 8 per w_k
    np.testing.assert_allclose(np.asarray(s4["params"]["w"]), w - grad, rtol=1e-5)  # sgd(1.0)


def test_nan_state_is_never_saved(tmp_path):
    import grain

    ds = grain.MapDataset.source(list(range(10))).batch(2).to_iter_dataset()
    it = iter(ds)
    saver = ckpt.StageCheckpointer(tmp_path / "ck", keep=2, async_save=False)
    assert saver.save(1, {"w": jnp.ones(2)}, it, {"stage": "x"})
    assert not saver.save(2, {"w": jnp.asarray([1.0, jnp.nan])}, it, {"stage": "x"})
    saver.wait()
    assert saver.latest_step() == 1


def test_schedule_and_groups():
    sched = optim.warmup_linear_decay(1.0, 4, 12)
    assert [float(sched(s)) for s in (0, 2, 4, 8, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    names = {"mem_tokens": "meta", "metalora/q/A": "meta", "m2p/layers/0/in_proj": "decay",
             "m2p/layers/0/in_bias": "no_decay", "m2p/layers/0/norm1_scale": "no_decay", "m2p/layer_pe": "decay"}
    for path, group in names.items():
        assert optim.hypernet_group(path.split("/")) == group, path
    assert optim.hypernet_group(["mem_tokens"], train_mem_tokens=False) == "frozen"
    assert optim.hypernet_group(["metalora", "q", "A"], freeze_metalora=True) == "frozen"


def test_each_group_is_clipped_separately():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    cfg = ml_collections.ConfigDict(dict(OPT, lr=1.0, warmup_steps=0))
    tx = optim.make_optimizer(cfg, 10, {"a": "decay", "b": "no_decay"})
    grads = {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([0.3, 0.4])}
    clip = optax.multi_transform({"decay": optax.clip_by_global_norm(1.0), "no_decay": optax.clip_by_global_norm(1.0)},
                                 {"a": "decay", "b": "no_decay"})
    clipped, _ = clip.update(grads, clip.init(params))
    np.testing.assert_allclose(clipped["a"], [0.6, 0.8], rtol=1e-6)  # norm 5 -> 1
    np.testing.assert_allclose(clipped["b"], [0.3, 0.4], rtol=1e-6)  # norm 0.5: untouched
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(np.all(np.isfinite(np.asarray(u))) for u in jax.tree.leaves(updates))


@pytest.mark.slow
def test_bf16_compute_and_remat_match_float32():
    from shine_jax.base_model import BaseModel
    from shine_jax.sharding import make_mesh
    from shine_jax.train import loop
    from shine_jax.train.config import model_config
    from tests.train_utils import small_config

    losses = {}
    for name, extra in (("f32", []), ("remat", ["model.remat=True"]), ("bf16", ["model.compute_dtype='bfloat16'"]),
                        ("fused", ["model.attention='xla'"]),
                        ("frozen_bf16", ["model.frozen_param_dtype='bfloat16'"])):
        cfg = small_config("pretrain", 4, extra)
        base = BaseModel.random(model_config(cfg, 96), seed=0)
        base.decoder.dtype = jnp.bfloat16 if name == "bf16" else jnp.float32
        loop.with_runtime(base, cfg)  # also re-splits the graph with the dtype set above
        merged = nnx.merge(base.graphdef, base.state)  # what the jitted functions see
        assert (merged.remat, merged.attention) == (cfg.model.remat, cfg.model.attention)
        frozen_dtypes = {str(x.dtype) for x in jax.tree.leaves(base.state)}
        assert frozen_dtypes == {"bfloat16" if name == "frozen_bf16" else "float32"}
        task = loop.shine_task(cfg, base, make_mesh((1, 1, 1)), workdir=None)
        b, tc, tq = 2, cfg.data.context_length, cfg.data.conversation_length
        r = np.random.default_rng(0)
        batch = {"evidence_ids": r.integers(1, 96, (b, tc)), "evidence_mask": np.ones((b, tc), np.int32),
                 "input_ids": r.integers(1, 96, (b, tq)), "attention_mask": np.ones((b, tq), np.int32),
                 "labels": r.integers(1, 96, (b, tq))}
        loss, grads = jax.jit(jax.value_and_grad(lambda p, t=task, b=batch: t.loss_fn(p, t.frozen, b)[0]))(task.params)
        losses[name] = (float(loss), grads)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(task.params))  # master weights stay float32
    assert losses["remat"][0] == pytest.approx(losses["f32"][0], rel=1e-6)
    # relative to the largest gradient, as in the sharded check: an element that sums many cancelling terms (a
    # bias gradient of ~5e-5) may differ by ~3e-3 of itself between two float32 fusions; a remat bug is O(1)
    g_f32, g_remat = jax.tree.leaves(losses["f32"][1]), jax.tree.leaves(losses["remat"][1])
    scale = max(float(np.abs(g).max()) for g in g_f32)
    for g1, g2 in zip(g_f32, g_remat):
        assert float(np.abs(np.asarray(g1) - np.asarray(g2)).max()) <= 1e-5 * scale
    assert losses["bf16"][0] == pytest.approx(losses["f32"][0], rel=2e-2)
    assert losses["frozen_bf16"][0] == pytest.approx(losses["f32"][0], rel=2e-2)
    assert losses["frozen_bf16"][0] != losses["f32"][0]  # the weights were rounded
    assert losses["fused"][0] == pytest.approx(losses["f32"][0], rel=1e-6)  # jax.nn.dot_product_attention
    for g1, g2 in zip(g_f32, jax.tree.leaves(losses["fused"][1])):
        assert float(np.abs(np.asarray(g1) - np.asarray(g2)).max()) <= 1e-5 * scale


def test_the_logged_learning_rate_follows_the_optimizers_count_past_skipped_steps():
    """optimizer.last_lr reads the schedule at the optimizer's own count: a skipped (non-finite) step does not
    advance it, so the logged lr is that of the last update applied, not of the step number."""
    params = {"w": jnp.ones((3,))}
    tx = optim.make_optimizer(OPT, 10, {"w": "decay"})
    schedule = optim.warmup_linear_decay(OPT.lr, OPT.warmup_steps, 10)
    step = jax.jit(make_train_step(quadratic, tx))
    state = init_state(params, tx)
    assert optim.last_lr(OPT, 10, state["opt_state"]) == 0.0
    good = {"x": jnp.ones((1, 2, 3)), "y": jnp.zeros((1, 2, 3))}
    bad = {"x": jnp.full((1, 2, 3), jnp.nan), "y": jnp.zeros((1, 2, 3))}
    for batch in (good, good, bad, bad):
        state, _ = step(state, None, batch)
    assert int(state["step"]) == 4 and int(state["skipped"]) == 2
    assert optim.last_lr(OPT, 10, state["opt_state"]) == pytest.approx(float(schedule(1)))  # the 2nd update's
    assert float(schedule(1)) != float(schedule(3))
    state, _ = step(state, None, good)
    assert optim.last_lr(OPT, 10, state["opt_state"]) == pytest.approx(float(schedule(2)))
