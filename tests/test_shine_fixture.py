"""The hypernetwork against the official SHINE implementation's recorded tensors (fixture set A).

Tolerance: relative error (max |ours - ref| / max |ref|) <= 1e-5 in float32 for every array; logits compared
where the attention mask is 1 (padding query rows are undefined in the reference)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from shine_jax.convert import official as off
from shine_jax.model.losses import causal_lm_loss
from shine_jax.model.objective import shine_loss
from shine_jax.shine import Shine
from tests.conftest import max_rel_err

MODULES = ("q", "k", "v", "o", "gate", "up", "down")
TOL = 1e-5


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return dict(np.load(fixtures_dir / "reference.npz"))


@pytest.fixture(scope="module")
def shine(fixtures_dir):
    return Shine.from_official(fixtures_dir / "checkpoint-epoch-1", fixtures_dir / "base_model", m2p_heads=4)


def test_config_read_from_checkpoint(shine, fixtures_dir):
    meta = json.loads((fixtures_dir / "fixture_meta.json").read_text())
    assert shine.num_memory_tokens == meta["num_mem_token"] == 64
    assert shine.cfg.lora_rank == meta["lora_r"] and shine.cfg.metalora_rank == meta["metalora_r"]
    assert shine.cfg.m2p.num_layers == 4


def test_memory_states(shine, ref):
    got = shine.memory_states(ref["evidence_ids"], ref["evidence_attention_mask"])
    assert got.shape == ref["memory_states"].shape
    assert max_rel_err(got, ref["memory_states"]) <= TOL


def test_m2p_layers_and_flat_output(shine, ref):
    flat, outs = shine.hyper.m2p(jnp.asarray(ref["memory_states"]), return_intermediates=True)
    assert max_rel_err(outs[0], ref["m2p_input"]) <= TOL
    for i in range(4):
        assert max_rel_err(outs[i + 1], ref[f"m2p_after_layer{i}"]) <= TOL, f"M2P layer {i}"
    assert max_rel_err(flat, ref["plain_output"]) <= TOL


def test_every_generated_lora_factor(shine, ref):
    lora = shine.generate_lora(ref["evidence_ids"], ref["evidence_attention_mask"])
    for layer in range(4):
        for m in MODULES:
            for f in ("A", "B"):
                want = ref[f"lora_{f}.{layer}.{m}"]
                got = np.asarray(lora[m][f][layer])
                assert got.shape == want.shape, (m, f)
                assert max_rel_err(got, want) <= TOL, f"lora_{f}.{layer}.{m}"


def test_logits_and_loss(shine, ref):
    lora = shine.generate_lora(ref["evidence_ids"], ref["evidence_attention_mask"])
    valid = ref["input_attention_mask"].astype(bool)
    logits = np.asarray(shine.logits(ref["input_ids"], ref["input_attention_mask"], lora))
    assert max_rel_err(logits, ref["logits_lora"], valid) <= TOL
    base = np.asarray(shine.logits(ref["input_ids"], ref["input_attention_mask"]))
    assert max_rel_err(base, ref["logits_base"], valid) <= TOL
    loss, _ = causal_lm_loss(jnp.asarray(logits), jnp.asarray(ref["labels"]))
    assert abs(float(loss) - float(ref["loss_lora"])) / abs(float(ref["loss_lora"])) <= TOL
    full = shine.loss(ref["input_ids"], ref["input_attention_mask"], ref["labels"], ref["evidence_ids"],
                      ref["evidence_attention_mask"])
    assert abs(float(full) - float(ref["loss_lora"])) / abs(float(ref["loss_lora"])) <= TOL


def test_gradients_of_one_training_step(shine, ref, fixtures_dir):
    grads_ref = dict(np.load(fixtures_dir / "train_step_grads.npz"))
    batch = {"input_ids": ref["input_ids"], "attention_mask": ref["input_attention_mask"], "labels": ref["labels"],
             "evidence_ids": ref["evidence_ids"], "evidence_mask": ref["evidence_attention_mask"]}
    batch = jax.tree.map(jnp.asarray, batch)
    divisor = float(grads_ref["grad_accum_divisor"])

    def loss_fn(hyper):
        loss, _ = shine_loss(shine.base.decoder, hyper, batch)
        return loss / divisor, loss

    (_, loss), grads = nnx.value_and_grad(loss_fn, has_aux=True)(shine.hyper)
    assert abs(float(loss) - float(grads_ref["train_loss"])) <= TOL * abs(float(grads_ref["train_loss"]))
    g = jax.tree.map(np.asarray, nnx.to_pure_dict(grads))
    checked = 0
    assert max_rel_err(g["mem_tokens"], grads_ref["grad.mem_tokens"]) <= TOL
    for m in MODULES:
        for layer in range(4):
            for f in ("A", "B"):
                assert max_rel_err(g["metalora"][m][f][layer], grads_ref[f"grad.metalora_{f}.{layer}.{m}"]) <= TOL, \
                    f"grad metalora {f}.{layer}.{m}"
                checked += 1
    ours_sd = off.m2p_to_state_dict(g["m2p"], lambda a: np.asarray(a))
    for key, val in ours_sd.items():
        assert max_rel_err(val, grads_ref[f"grad.m2p.{key}"]) <= TOL, f"grad m2p.{key}"
        checked += 1
    assert checked == 56 + 50
