"""LoRA application (SHINE_SPEC §6) against independent references.

1. The grouped ``x @ A @ B`` against a float64 numpy transcription of the official ``LoraLinear.forward``.
2. The whole model: per-example + shared LoRA through our decoder equals, row by row, HF transformers with the
   LoRA merged into that row's weights (``W^T + A @ B``), which is the same linear map by construction.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from shine_jax.base_model import BaseModel
from shine_jax.model.decoder import positions_from_mask
from shine_jax.model.lora import check_lora, lora_delta, lora_shapes
from tests.conftest import left_padded_batch, make_hf_model, max_rel_err


def numpy_lora_linear(x, a, b):
    """Official LoraLinear: reshape x to [Lb, nb, S, in]; (x @ A[:, None]) @ B[:, None]; reshape back."""
    lb = a.shape[0]
    nb = x.shape[0] // lb
    xs = x.reshape(lb, nb, -1, x.shape[-1]).astype(np.float64)
    out = np.matmul(np.matmul(xs, a[:, None].astype(np.float64)), b[:, None].astype(np.float64))
    return out.reshape(x.shape[0], x.shape[1], -1)


@pytest.mark.parametrize("lb", [1, 2, 4])
def test_grouped_delta_matches_numpy(lb):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 12)).astype(np.float32)
    a = rng.normal(size=(lb, 12, 3)).astype(np.float32)
    b = rng.normal(size=(lb, 3, 7)).astype(np.float32)
    assert max_rel_err(lora_delta(x, a, b), numpy_lora_linear(x, a, b)) <= 1e-6


@pytest.mark.parametrize("lb", [1, 2, 4])
def test_grouped_delta_gradients_match_numpy(lb):
    """The hand-written backward pass of the grouped delta against float64 numpy: for out = x A B per group and
    a cotangent G, dX = G B^T A^T, dA = x^T G B^T, dB = (x A)^T G, summed over the group's rows."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 12)).astype(np.float32)
    a = rng.normal(size=(lb, 12, 3)).astype(np.float32)
    b = rng.normal(size=(lb, 3, 7)).astype(np.float32)
    g = rng.normal(size=(4, 5, 7)).astype(np.float32)
    dx, da, db = jax.grad(lambda *args: jnp.sum(lora_delta(*args) * g), argnums=(0, 1, 2))(x, a, b)
    xs, gs = (v.reshape(lb, 4 // lb, 5, -1).astype(np.float64) for v in (x, g))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want_dx = np.einsum("gnso,gro,gir->gnsi", gs, b64, a64).reshape(x.shape)
    want_da = np.einsum("gnsi,gnso,gro->gir", xs, gs, b64)
    want_db = np.einsum("gnsi,gir,gnso->gro", xs, a64, gs)
    for got, want in ((dx, want_dx), (da, want_da), (db, want_db)):
        assert max_rel_err(got, want) <= 1e-5


def random_lora(cfg, rank, batch, seed, scale=0.05):
    rng = np.random.default_rng(seed)
    return {m: {f: (scale * rng.normal(size=s)).astype(np.float32) for f, s in fs.items()}
            for m, fs in lora_shapes(cfg, rank, batch).items()}


HF_NAMES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def merged_hf_logits(hf_model, loras_for_row, ids, mask):
    """HF logits of one row with every LoRA's A@B merged into the torch weights (restored afterwards)."""
    saved = {n: p.detach().clone() for n, p in hf_model.named_parameters()}
    with torch.no_grad():
        for i, layer in enumerate(hf_model.model.layers):
            for m, path in HF_NAMES.items():
                mod = layer.get_submodule(path)
                for a, b in loras_for_row:
                    mod.weight += torch.tensor((a[m][i].astype(np.float64) @ b[m][i]).T, dtype=torch.float32)
        pos = positions_from_mask(mask)
        out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(np.asarray(pos))).logits.numpy()
        for n, p in hf_model.named_parameters():
            p.copy_(saved[n])
    return out


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_per_example_and_shared_lora_match_merged_weights(tmp_path, family):
    hf_dir, hf_model = make_hf_model(tmp_path, family, tie=True)
    base = BaseModel.from_hf(hf_dir)
    cfg = base.cfg
    ids, mask = left_padded_batch(cfg.vocab_size, [9, 5, 7], 9, seed=3)
    per_example = random_lora(cfg, rank=4, batch=3, seed=1)
    shared = random_lora(cfg, rank=8, batch=1, seed=2)
    cases = {
        "per-example": ([per_example], lambda r: [({m: per_example[m]["A"][:, r] for m in per_example},
                                                   {m: per_example[m]["B"][:, r] for m in per_example})]),
        "shared": ([shared], lambda r: [({m: shared[m]["A"][:, 0] for m in shared},
                                         {m: shared[m]["B"][:, 0] for m in shared})]),
    }
    cases["both"] = ([shared, per_example], lambda r: cases["shared"][1](r) + cases["per-example"][1](r))
    base_logits = np.asarray(base.logits(ids, mask))
    for name, (loras, row_factors) in cases.items():
        got = np.asarray(base.logits(ids, mask, lora=loras))
        assert np.max(np.abs(got - base_logits)) > 1e-3, f"{name}: LoRA had no visible effect"
        for r in range(ids.shape[0]):
            split = [(a, b) for a, b in row_factors(r)]
            ref = merged_hf_logits(hf_model, split, ids[r:r + 1], mask[r:r + 1])
            err = max_rel_err(got[r:r + 1], ref, mask[r:r + 1].astype(bool))
            assert err <= 1e-5, f"{name} row {r}: max relative error {err:.2e}"


def test_bad_lora_shapes_are_one_line_errors(tmp_path):
    hf_dir, _ = make_hf_model(tmp_path, "qwen3", tie=True)
    base = BaseModel.from_hf(hf_dir)
    ids, mask = left_padded_batch(base.cfg.vocab_size, [4, 4, 4], 4)
    good = random_lora(base.cfg, 2, 3, 0)
    bad_in = dict(good, q={"A": good["q"]["A"][:, :, :-1], "B": good["q"]["B"]})
    with pytest.raises(ValueError, match=r"lora\['q'\] has A.*but the model needs"):
        base.logits(ids, mask, lora=bad_in)
    with pytest.raises(ValueError, match="does not divide the input batch"):
        base.logits(ids, mask, lora=random_lora(base.cfg, 2, 2, 0))
    with pytest.raises(ValueError, match="unknown module"):
        check_lora(base.cfg, dict(good, qkv=good["q"]))
    with pytest.raises(ValueError, match="disagree on the LoRA batch"):
        check_lora(base.cfg, dict(good, q=random_lora(base.cfg, 2, 1, 0)["q"]))


def test_init_lora_official_and_peft_and_the_meta_lora_uses_it():
    """One LoRA init: B = 0 (no change at the start); official A ~ N(0, 0.001), PEFT's A ~ U(+-1/sqrt(in)); the
    hypernetwork's Meta LoRA is exactly init_lora's official draw from the same key stream."""
    import jax
    from flax import nnx

    from shine_jax.model.config import LORA_MODULES, ModelConfig
    from shine_jax.model.hypernet import HyperConfig, Hypernetwork
    from shine_jax.model.lora import init_lora

    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=2, num_kv_heads=2, head_dim=32)
    keys = iter(jax.random.split(jax.random.key(0), 7))
    official = init_lora(cfg, 16, lambda: next(keys), batch=3)
    assert list(official) == list(LORA_MODULES)
    a = np.concatenate([np.asarray(official[m]["A"]).ravel() for m in official])
    assert abs(a.std() - np.sqrt(1e-3)) < 0.02 * np.sqrt(1e-3) and abs(a.mean()) < 1e-3
    assert all(not np.asarray(official[m]["B"]).any() for m in official)
    keys = iter(jax.random.split(jax.random.key(0), 7))
    peft = init_lora(cfg, 16, lambda: next(keys), init="peft")
    for ab in peft.values():
        bound = 1 / np.sqrt(ab["A"].shape[2])
        assert np.abs(np.asarray(ab["A"])).max() <= bound and np.abs(np.asarray(ab["A"])).max() > 0.9 * bound
    with pytest.raises(ValueError, match="LoRA init 'xavier'"):
        init_lora(cfg, 2, lambda: jax.random.key(0), init="xavier")
    hyper = Hypernetwork(cfg, HyperConfig(lora_rank=2, metalora_rank=8), nnx.Rngs(3))
    rngs = nnx.Rngs(3)  # the Meta LoRA is the first draw of the hypernetwork's params stream
    expected = init_lora(cfg, 8, rngs.params)
    for m in LORA_MODULES:
        for k in "AB":
            np.testing.assert_array_equal(np.asarray(hyper.metalora[m][k][...]), np.asarray(expected[m][k]))
