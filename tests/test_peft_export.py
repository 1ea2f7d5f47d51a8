"""Generated LoRA -> PEFT adapter folder, verified in PyTorch with transformers + peft."""

import json
import pathlib
import warnings

import numpy as np
import pytest
import torch

from shine_jax.base_model import BaseModel
from shine_jax.model.hypernet import HyperConfig
from shine_jax.model.m2p import M2PConfig
from shine_jax.shine import Shine
from tests.conftest import left_padded_batch, make_hf_model, max_rel_err


def peft_logits(hf_dir, adapter_dir, ids, mask):
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not key_warnings, key_warnings  # PEFT warns about missing/unexpected adapter keys: a failure here
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(pos)).logits.numpy()


def check_export(shine, hf_dir, tmp_path, evidence, queries):
    lora = shine.generate_lora(*evidence)
    ids, mask = queries
    ours = np.asarray(shine.logits(ids, mask, lora))
    no_lora = np.asarray(shine.logits(ids, mask))
    assert np.max(np.abs(ours - no_lora)) > 1e-4, "the LoRA must visibly change the logits for this test to mean anything"
    for index in (0, 1):
        out = shine.export_peft(lora, tmp_path / f"adapter{index}", index=index)
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["lora_alpha"] == cfg["r"] == shine.cfg.lora_rank
        ref = peft_logits(hf_dir, out, ids[index:index + 1], mask[index:index + 1])
        err = max_rel_err(ours[index:index + 1], ref, mask[index:index + 1].astype(bool))
        assert err <= 1e-4, f"example {index}: {err:.2e}"


def test_qwen3_fixture_adapter_matches_peft(fixtures_dir, tmp_path):
    shine = Shine.from_official(fixtures_dir / "checkpoint-epoch-1", fixtures_dir / "base_model", m2p_heads=4)
    ref = np.load(fixtures_dir / "reference.npz")
    check_export(shine, fixtures_dir / "base_model", tmp_path,
                 (ref["evidence_ids"], ref["evidence_attention_mask"]),
                 (ref["input_ids"], ref["input_attention_mask"]))


def test_llama_adapter_matches_peft(tmp_path):
    hf_dir, _ = make_hf_model(tmp_path, "llama", tie=True)
    base = BaseModel.from_hf(hf_dir)
    hcfg = HyperConfig(lora_rank=4, metalora_rank=4, scale=0.05, m2p=M2PConfig(num_layers=2, num_heads=4))
    shine = Shine.create(base, hcfg, seed=1)
    ev = left_padded_batch(base.cfg.vocab_size, [12, 7], 12, seed=1)
    q = left_padded_batch(base.cfg.vocab_size, [9, 5], 9, seed=2)
    check_export(shine, hf_dir, tmp_path, ev, q)


def test_bad_export_requests(fixtures_dir, tmp_path):
    shine = Shine.from_official(fixtures_dir / "checkpoint-epoch-1", fixtures_dir / "base_model", m2p_heads=4)
    ref = np.load(fixtures_dir / "reference.npz")
    lora = shine.generate_lora(ref["evidence_ids"], ref["evidence_attention_mask"])
    with pytest.raises(ValueError, match="index 5 is outside the LoRA batch of 2"):
        shine.export_peft(lora, tmp_path / "a", index=5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        shine.export_peft(lora, tmp_path / "full")
    shine.export_peft(lora, tmp_path / "full", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.slow
def test_tiny_base_exports_to_transformers(trained_workdir, tmp_path):
    """The from-scratch tiny base (our BPE tokenizer included) as an HF folder transformers loads offline."""
    import transformers

    from shine_jax import cli

    out = tmp_path / "tiny_hf"
    assert cli.main(["convert", "jax-to-hf", str(trained_workdir / "base_pretrain" / "final"), str(out)]) == 0
    ours = BaseModel.load(trained_workdir / "base_pretrain" / "final")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    text = "Verena Holloway was born on March 4, 1961."
    assert tok(text)["input_ids"] == ours.tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": "Where does Verena Holloway live?"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    ids, mask = ours.encode([text, "Where does Verena Holloway live?"])
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(pos)).logits.numpy()
    assert max_rel_err(np.asarray(ours.logits(ids, mask)), ref, mask.astype(bool)) <= 1e-5


def test_composed_scaled_adapter_loads_by_name_with_peft_parity(tmp_path):
    """Two documents' adapters composed along the rank, at half strength, loaded by AutoPeftModelForCausalLM from
    the adapter folder alone (its base found through base_model_name_or_path)."""
    import hashlib

    import peft

    from shine_jax.model.lora import compose_examples

    hf_dir, _ = make_hf_model(tmp_path, "llama", tie=True)
    base = BaseModel.from_hf(hf_dir)
    hcfg = HyperConfig(lora_rank=4, metalora_rank=4, scale=0.05, m2p=M2PConfig(num_layers=2, num_heads=4))
    shine = Shine.create(base, hcfg, seed=1)
    lora = shine.generate_lora(*left_padded_batch(base.cfg.vocab_size, [12, 7, 10], 12, seed=1))
    ids, mask = left_padded_batch(base.cfg.vocab_size, [9, 6], 9, seed=2)
    out = shine.export_peft(lora, tmp_path / "composed", index=[0, 2], scale=0.5, documents=["doc a", "doc c"])

    parts = [compose_examples(lora, [i], [0.5]) for i in (0, 2)]  # batch 1 each: repeat for the 2 query rows
    rows = [{m: {k: np.repeat(np.asarray(v), 2, axis=1) for k, v in leaf.items()} for m, leaf in p.items()}
            for p in parts]
    ours = np.asarray(shine.logits(ids, mask, rows))
    assert np.max(np.abs(ours - np.asarray(shine.logits(ids, mask, rows[:1])))) > 1e-4  # the second one counts

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 8 and pathlib.Path(cfg["base_model_name_or_path"]).resolve() == hf_dir.resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.AutoPeftModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos)).logits.numpy()
    assert max_rel_err(ours, ref, mask.astype(bool)) <= 1e-4

    prov = json.loads((out / "shine_provenance.json").read_text())
    assert [d["sha256"] for d in prov["documents"]] == [hashlib.sha256(t.encode()).hexdigest() for t in ("doc a", "doc c")]
    assert prov["adapter_scale"] == 0.5 and prov["adapter_rank"] == 8 and prov["shine_checkpoint"] is None
    with pytest.raises(ValueError, match="index 3 is outside"):
        shine.export_peft(lora, tmp_path / "bad", index=[0, 3])
