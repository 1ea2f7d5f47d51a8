"""HF folder <-> ours: bit-identical round trips, the CLI, and one-line errors for bad folders."""

import json
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from shine_jax import cli
from shine_jax.base_model import BaseModel
from shine_jax.convert import hf as hfconv
from tests.conftest import left_padded_batch, make_hf_model


def tensors_of(folder):
    return hfconv.read_safetensors(folder)


@pytest.mark.parametrize("family,tie", [("qwen3", False), ("llama", True)])
def test_round_trip_is_bit_identical(tmp_path, family, tie):
    hf_dir, _ = make_hf_model(tmp_path, family, tie)
    assert cli.main(["convert", "hf-to-jax", str(hf_dir), str(tmp_path / "jax")]) == 0
    assert cli.main(["convert", "jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "back")]) == 0
    a, b = tensors_of(hf_dir), tensors_of(tmp_path / "back")
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == \
        json.loads((hf_dir / "config.json").read_text())


def test_exported_folder_loads_in_transformers(tmp_path):
    import torch
    import transformers

    model = BaseModel.random(BaseModel.from_hf(make_hf_model(tmp_path, "qwen3", True)[0]).cfg, seed=5)
    out = model.to_hf(tmp_path / "exported")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids, mask = left_padded_batch(model.cfg.vocab_size, [5, 5], 5)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.logits(ids, mask)), ref, rtol=1e-5, atol=1e-5)


def test_sharded_safetensors_index_is_read(tmp_path):
    hf_dir, _ = make_hf_model(tmp_path, "llama", True)
    base = BaseModel.from_hf(hf_dir)
    cfg, raw = hfconv.read_hf_config(hf_dir)
    out = hfconv.write_hf_folder(tmp_path / "sharded", raw, hfconv.params_to_hf(cfg, base.params()),
                                 max_shard_bytes=50_000)
    assert (out / hfconv.INDEX_FILE).is_file() and not (out / hfconv.SINGLE_FILE).exists()
    again = BaseModel.from_hf(out)
    ids, mask = left_padded_batch(cfg.vocab_size, [4], 4)
    np.testing.assert_array_equal(np.asarray(again.logits(ids, mask)), np.asarray(base.logits(ids, mask)))


def run_cli_error(capsys, argv):
    assert cli.main(argv) == 2
    full = capsys.readouterr().err
    err = full.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in full
    return err


def test_bad_folders_give_one_line_errors(tmp_path, capsys):
    hf_dir, _ = make_hf_model(tmp_path, "qwen3", True)
    out = str(tmp_path / "o")
    assert "is not a directory" in run_cli_error(capsys, ["convert", "hf-to-jax", str(tmp_path / "nope"), out])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in run_cli_error(capsys, ["convert", "hf-to-jax", str(empty), out])

    def variant(name, edit_config=None, edit_tensors=None):
        d = tmp_path / name
        shutil.copytree(hf_dir, d)
        if edit_config:
            c = json.loads((d / "config.json").read_text())
            edit_config(c)
            (d / "config.json").write_text(json.dumps(c))
        if edit_tensors:
            t = load_file(d / "model.safetensors")
            edit_tensors(t)
            save_file(t, d / "model.safetensors")
        return str(d)

    err = run_cli_error(capsys, ["convert", "hf-to-jax", variant("gpt2", lambda c: c.update(model_type="gpt2")), out])
    assert "unsupported model_type 'gpt2'" in err and "qwen3, llama" in err
    err = run_cli_error(capsys, ["convert", "hf-to-jax", variant("noweights", edit_tensors=lambda t: t.clear()), out])
    assert "missing" in err
    missing_shard = variant("noshards")
    (tmp_path / "noshards" / "model.safetensors").unlink()
    assert "weights are missing" in run_cli_error(capsys, ["convert", "hf-to-jax", missing_shard, out])
    err = run_cli_error(capsys, ["convert", "hf-to-jax",
                                 variant("wide", lambda c: c.update(intermediate_size=256)), out])
    assert "has shape" in err and "config implies" in err
    err = run_cli_error(capsys, ["convert", "hf-to-jax", variant("heads", lambda c: c.update(num_key_value_heads=3)), out])
    assert "num_kv_heads" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in run_cli_error(capsys, ["convert", "hf-to-jax", str(hf_dir), str(tmp_path / "full")])


def test_dtype_bfloat16_keeps_a_bfloat16_checkpoint_in_bfloat16(tmp_path, monkeypatch):
    """`--dtype bfloat16`: an HF folder read into bfloat16 parameters, saved and exported in bfloat16, and a
    bfloat16 checkpoint read without a float32 copy of any tensor on the way (the reader is watched)."""
    hf_dir, _ = make_hf_model(tmp_path, "qwen3", False)
    assert cli.main(["convert", "hf-to-jax", str(hf_dir), str(tmp_path / "jax"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "jax" / "model.json").read_text())["param_dtype"] == "bfloat16"
    jax_model = BaseModel.load(tmp_path / "jax")
    assert {str(a.dtype) for a in jax.tree.leaves(jax_model.params())} == {"bfloat16"}
    assert cli.main(["convert", "jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    a, b = tensors_of(hf_dir), tensors_of(tmp_path / "bf16")
    assert sorted(a) == sorted(b) and {str(t.dtype) for t in b.values()} == {"bfloat16"}
    for k in a:  # the float32 weights, rounded once
        np.testing.assert_array_equal(b[k], a[k].astype(b[k].dtype), err_msg=k)

    seen = []
    read = hfconv.read_safetensors
    monkeypatch.setattr(hfconv, "read_safetensors", lambda d: seen.append(read(d)) or seen[-1])
    model = BaseModel.from_hf(tmp_path / "bf16", dtype="bfloat16", compute_dtype="bfloat16")
    assert {str(t.dtype) for t in seen[0].values()} == {"bfloat16"}
    assert {str(x.dtype) for x in jax.tree.leaves(model.params())} == {"bfloat16"}
    ids, mask = left_padded_batch(model.cfg.vocab_size, [5, 3], 5)
    want = np.asarray(jax_model.logits(ids, mask), np.float32)
    np.testing.assert_allclose(np.asarray(model.logits(ids, mask)), want, rtol=0, atol=0.05 * np.abs(want).max())


def test_ask_with_dtype_bfloat16(trained_workdir, tmp_path, capsys):
    from shine_jax.shine import Shine

    shine = Shine.load(trained_workdir, compute_dtype="bfloat16", dtype="bfloat16")
    assert {str(x.dtype) for x in jax.tree.leaves(shine.base.params())} == {"bfloat16"}
    doc = tmp_path / "doc.txt"
    doc.write_text("Ada Vell was born in Norcastle. She works as a baker.")
    assert cli.main(["ask", "--workdir", str(trained_workdir), "--doc", str(doc), "--question",
                     "Where was Ada Vell born?", "--max-new-tokens", "4", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def watch_base_loads(monkeypatch) -> list:
    """``BaseModel.load`` as before, recording the (dtype, compute_dtype) of each call in the returned list."""
    asked = []
    load = BaseModel.load
    monkeypatch.setattr(BaseModel, "load", classmethod(lambda cls, path, dtype=None, compute_dtype=None: (
        asked.append((dtype, compute_dtype)), load(path, dtype=dtype, compute_dtype=compute_dtype))[1]))
    return asked


def test_a_stage_reads_its_frozen_base_in_the_storage_dtype(trained_workdir, monkeypatch):
    """model.frozen_param_dtype=bfloat16: the multi-QA stage reads the previous stage's base as bfloat16 from the
    file on (the loader is asked for it), not as float32 cast afterwards."""
    from shine_jax.train import loop
    from tests.train_utils import small_config

    asked = watch_base_loads(monkeypatch)
    cfg = small_config("ift_mqa", 4, ["model.frozen_param_dtype='bfloat16'"], data_dir=trained_workdir / "data")
    base = loop.load_base(cfg, trained_workdir)
    assert [dtype for dtype, _ in asked] == ["bfloat16"]
    assert {str(x.dtype) for x in jax.tree.leaves(base.params())} == {"bfloat16"}


def test_internalize_and_eval_read_the_base_in_the_dtype_asked(trained_workdir, tmp_path, monkeypatch, capsys):
    """``--dtype bfloat16`` on ``internalize`` and ``eval``: the base is read as bfloat16 from the file on (the
    loader is asked for it), and both commands finish."""
    from shine_jax.data.corpus import write_jsonl

    asked = watch_base_loads(monkeypatch)
    doc = tmp_path / "doc.txt"
    doc.write_text("Ada Vell was born in Norcastle. She works as a baker.")
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--doc", str(doc), "--out",
                     str(tmp_path / "adapter"), "--dtype", "bfloat16"]) == 0
    data = tmp_path / "docs.jsonl"
    write_jsonl([{"id": "a", "context": doc.read_text(), "qa": [{"question": "Where was Ada Vell born?",
                                                                 "answers": ["Norcastle"]}]}], data)
    assert cli.main(["eval", "--workdir", str(trained_workdir), "--data", str(data), "--methods", "shine",
                     "--max-new-tokens", "4", "--no-progress", "--dtype", "bfloat16",
                     "--out", str(tmp_path / "r.json")]) == 0
    assert asked == [("bfloat16", "bfloat16")] * 2
    capsys.readouterr()
