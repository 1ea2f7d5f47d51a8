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


# A template that renders like Qwen3's own when thinking is not switched off: an empty <think> block before the
# answer that follows the last user turn, and none in the generation prompt. (Written here to show what a Qwen3
# folder brings; the official trainer replaces it.)
QWEN3_LIKE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' and loop.last and enable_thinking is not defined -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def stand_in_tokenizer(meta, template):
    """The fixture's word-level stand-in: word ``wN`` has id N, the role words, newline and special tokens the ids
    the fixture records, spaces separate words."""
    from tokenizers import AddedToken, Regex, pre_tokenizers
    from tokenizers import Tokenizer as Backend
    from tokenizers import models as tmodels

    from shine_jax.data.hf_tokenizer import Tokenizer

    ids = meta["special_token_ids"]
    vocab = {f"w{i}": i for i in range(min(ids.values()))}
    vocab.update({"user": ids["user"], "assistant": ids["assistant"], "\n": ids["\n"], "<unk>": 503})
    specials = sorted((t for t in ids if t.startswith("<")), key=ids.get)
    vocab.update({t: ids[t] for t in specials})
    backend = Backend(tmodels.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                     pre_tokenizers.Split(Regex("\n"), "isolated")])
    backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
    return Tokenizer(backend, {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"}, template)


def test_a_qwen3_base_renders_conversations_as_the_official_trainer(fixtures_dir, ref):
    """SHINE's Qwen3 chat format against the official collator's token ids (the fixture's ``input_ids`` and
    ``labels``: the official replacement template rendered by transformers with ``enable_thinking=False``): a
    Qwen3 base prepared for SHINE renders the fixture's question/answer pairs to exactly those ids and labels,
    whatever template its folder brought, and its generation prompt ends at ``<|im_start|>assistant\\n`` as the
    official evaluation's does. A LLaMA-family base keeps its own template."""
    import dataclasses

    from shine_jax.base_model import BaseModel
    from shine_jax.data import pipelines, prompts
    from shine_jax.model.config import ModelConfig
    from shine_jax.shine import with_shine_tokens

    meta = json.loads((fixtures_dir / "fixture_meta.json").read_text())
    texts = meta["collator_texts"]
    tok = stand_in_tokenizer(meta, QWEN3_LIKE_TEMPLATE)
    cfg = ModelConfig(family="qwen3", vocab_size=512, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8)
    pad, length = meta["special_token_ids"]["<|endoftext|>"], ref["input_ids"].shape[1]

    def collate(tokenizer):
        turns = [prompts.chat_turns(tokenizer, [(q, a)]) for q, a in zip(texts["question"], texts["answer"],
                                                                           strict=True)]
        rows = [pipelines.left_pad(i, length, pad, labels=lab) for i, lab in turns]
        return np.stack([r["ids"] for r in rows]), np.stack([r["labels"] for r in rows])

    as_brought, _ = collate(tok)
    assert (as_brought == meta["special_token_ids"]["<think>"]).any()  # the folder's template: a think block
    shine_tok = with_shine_tokens(BaseModel.random(cfg, tokenizer=tok)).tokenizer
    ids, labels = collate(shine_tok)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(labels, ref["labels"])
    assert prompts.generation_text(shine_tok, [{"role": "user", "content": "w1"}]).endswith(
        "<|im_end|>\n<|im_start|>assistant\n")
    llama = with_shine_tokens(BaseModel.random(dataclasses.replace(cfg, family="llama"), tokenizer=tok))
    assert llama.tokenizer.chat_template == QWEN3_LIKE_TEMPLATE
