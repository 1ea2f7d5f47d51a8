"""A SHINE folder refers to its frozen base (path + content hash) instead of copying it; a bundle copies it."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from shine_jax import checkpoints, cli
from shine_jax.base_model import BaseModel
from shine_jax.shine import Shine
from shine_jax.train import loop
from shine_jax.train.config import hyper_config
from tests.train_utils import small_config


def test_a_trained_stage_refers_to_its_base_and_the_next_stage_reads_it_once(trained_workdir, monkeypatch):
    for stage in ("pretrain", "ift_mqa", "ift_1qa"):
        final = trained_workdir / stage / "final"
        assert not (final / "base").exists(), f"{stage}/final holds a copy of the base"
        ref = json.loads((final / checkpoints.BASE_REF).read_text())
        assert ref["relative_path"] == "../../base_pretrain/final" and ref["kind"] == "shine_jax"
    base_dir = (trained_workdir / "base_pretrain" / "final").resolve()
    reads = []
    real_restore = loop.multihost.restore

    def counting_restore(path, *args, **kwargs):
        reads.append(str(path))
        return real_restore(path, *args, **kwargs)

    monkeypatch.setattr("shine_jax.multihost.restore", counting_restore)
    cfg = small_config("ift_mqa", 2, data_dir=trained_workdir / "data")
    base = loop.load_base(cfg, trained_workdir)
    loop.shine_task(cfg, base, loop.shd.make_mesh((1, 1, 1)), trained_workdir)
    base_reads = [r for r in reads if str(base_dir) in str(pathlib.Path(r).resolve())]
    assert len(base_reads) == 1, reads  # the base params once; the previous stage's hypernetwork besides
    assert any(r.endswith("pretrain/final/hyper") for r in reads)


def test_a_moved_workdir_still_finds_its_base_and_a_changed_or_missing_base_is_refused(trained_workdir, tmp_path,
                                                                                         capsys):
    moved = tmp_path / "moved"
    shutil.copytree(trained_workdir, moved, symlinks=True)  # new mtimes: the hash is checked again, and matches
    shine = Shine.load(moved / "ift_1qa" / "final")
    assert shine.base.origin.path == (moved / "base_pretrain" / "final").resolve()
    shine.save(tmp_path / "elsewhere")  # refers to the moved base, by relative and absolute path
    tok_json = moved / "base_pretrain" / "final" / "tokenizer" / "tokenizer.json"
    tok_json.write_text(tok_json.read_text() + " ")
    with pytest.raises(checkpoints.BaseReferenceError, match="has changed since"):
        Shine.load(moved / "ift_1qa" / "final")
    shutil.rmtree(moved / "base_pretrain")
    (tmp_path / "doc.txt").write_text("Ana Lopa works as a baker.")
    capsys.readouterr()
    assert cli.main(["ask", "--workdir", str(tmp_path / "elsewhere"), "--doc", str(tmp_path / "doc.txt"),
                     "--question", "What is Ana Lopa's job?"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "which is missing" in err[0] and "convert bundle" in err[0]


def test_bundle_writes_a_folder_that_travels_alone(trained_workdir, tmp_path, capsys):
    moved = tmp_path / "w"
    shutil.copytree(trained_workdir, moved, symlinks=True)
    assert cli.main(["convert", "bundle", str(moved), str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "base" / "model.json").is_file()
    assert not (tmp_path / "bundle" / checkpoints.BASE_REF).exists()
    shutil.rmtree(moved)  # the original base is gone; the bundle does not need it
    bundled = Shine.load(tmp_path / "bundle")
    original = Shine.load(trained_workdir)
    ids = np.arange(1, 9, dtype=np.int32)[None]
    np.testing.assert_array_equal(np.asarray(bundled.base.logits(ids)), np.asarray(original.base.logits(ids)))


def test_a_base_built_in_memory_is_copied(tmp_path):
    from shine_jax.model.config import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=2, head_dim=8)
    shine = Shine.create(BaseModel.random(cfg), hyper_config(small_config("pretrain", 2)))
    shine.save(tmp_path / "s")
    assert (tmp_path / "s" / "base" / "model.json").is_file()
    assert checkpoints.base_model_dict(tmp_path / "s")["hidden_size"] == 16


def test_all_finite_reads_every_floating_leaf_and_skips_integers():
    import jax.numpy as jnp

    from shine_jax.train.checkpoint import all_finite

    assert all_finite({"a": jnp.ones(3, jnp.bfloat16), "b": np.arange(3), "c": jnp.zeros((2, 2))})
    assert all_finite({})
    for bad in (jnp.array([1.0, jnp.inf], jnp.bfloat16), jnp.array([0.0, jnp.nan]), np.array([-np.inf], np.float32)):
        assert not all_finite({"ok": jnp.ones(2), "step": jnp.int32(7), "bad": bad})


def test_a_loaded_shine_skips_the_init_and_equals_one_initialised_then_set(tmp_path):
    """``Shine.load`` builds the hypernetwork from its saved parameters without initialising it; the result equals
    a fresh init with those parameters set (module structure, every parameter, the generated LoRA), and a parameter
    set missing a tensor (a folder older than that tensor) keeps the tensor's fresh init."""
    import jax

    from shine_jax.model.config import ModelConfig

    cfg = ModelConfig(family="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=2, head_dim=8)
    hcfg = hyper_config(small_config("pretrain", 2))
    trained = Shine.create(BaseModel.random(cfg), hcfg, seed=3)
    p = trained.hyper_params()
    trained.set_hyper_params({**p, "mem_tokens": np.full_like(p["mem_tokens"], 0.5)})  # unlike any init
    trained.save(tmp_path / "s")
    loaded = Shine.load(tmp_path / "s")
    _, params, _ = Shine.read_hyper(tmp_path / "s")
    reference = Shine.create(loaded.base, hcfg, seed=0)
    reference.set_hyper_params(params)
    assert loaded.hyper_graphdef == reference.hyper_graphdef
    for a, b in ((trained.hyper_params(), loaded.hyper_params()), (reference.hyper_params(), loaded.hyper_params())):
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    ids = np.array([[3, 4, 5, 6]])
    for x, y in zip(jax.tree.leaves(reference.generate_lora(ids)), jax.tree.leaves(loaded.generate_lora(ids))):
        np.testing.assert_array_equal(x, y)

    older = {k: v for k, v in params.items() if k != "mem_tokens"}
    partial = Shine.with_params(loaded.base, hcfg, older).hyper_params()
    fresh = Shine.create(loaded.base, hcfg).hyper_params()  # seed 0, unlike the saved run's seed 3
    np.testing.assert_array_equal(partial["mem_tokens"], fresh["mem_tokens"])  # missing: the fresh init
    assert not np.any(partial["mem_tokens"] == 0.5)
    for x, y, z in zip(jax.tree.leaves(partial["metalora"]), jax.tree.leaves(params["metalora"]),
                       jax.tree.leaves(fresh["metalora"])):  # present: the saved tensors, not the fresh ones
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z) or not np.any(x)
