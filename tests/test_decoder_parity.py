"""Our decoder vs HF transformers (PyTorch) on tiny random models, float32, left-padded batches."""

import numpy as np
import pytest
import torch

from shine_jax.base_model import BaseModel
from shine_jax.model.decoder import positions_from_mask
from tests.conftest import left_padded_batch, make_hf_model, max_rel_err

CASES = [("qwen3", True, {}), ("qwen3", False, {}), ("llama", True, {}),
         ("llama", False, {"num_key_value_heads": 4})]  # GQA in the first three, plain MHA in the last


@pytest.mark.parametrize("family,tie,extra", CASES, ids=["qwen3-tied", "qwen3-untied", "llama-tied", "llama-mha"])
def test_logits_match_transformers(tmp_path, family, tie, extra):
    hf_dir, hf_model = make_hf_model(tmp_path, family, tie, **extra)
    ours = BaseModel.from_hf(hf_dir)
    ids, mask = left_padded_batch(ours.cfg.vocab_size, [11, 7, 3], 11, seed=1)
    pos = np.asarray(positions_from_mask(mask))
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(pos)).logits.numpy()
    got = np.asarray(ours.logits(ids, mask))
    assert got.shape == ref.shape
    err = max_rel_err(got, ref, mask.astype(bool))
    assert err <= 1e-5, f"max relative error {err:.2e} > 1e-5"


def test_padding_does_not_change_real_positions(tmp_path):
    """A row's logits do not depend on how much left padding it has."""
    hf_dir, _ = make_hf_model(tmp_path, "qwen3", True)
    ours = BaseModel.from_hf(hf_dir)
    ids, mask = left_padded_batch(ours.cfg.vocab_size, [6], 6, seed=2)
    padded_ids = np.concatenate([np.zeros((1, 5), ids.dtype), ids], 1)
    padded_mask = np.concatenate([np.zeros((1, 5), mask.dtype), mask], 1)
    a = np.asarray(ours.logits(ids, mask))[0]
    b = np.asarray(ours.logits(padded_ids, padded_mask))[0, 5:]
    assert max_rel_err(b, a) <= 1e-5
