"""Official checkpoint files in and out: exact round trips, safe loading, one-line shape errors, CLI."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from shine_jax import cli
from shine_jax.convert import official as off
from shine_jax.shine import Shine

CKPT = "checkpoint-epoch-1"


def assert_same_tree(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a.keys()) == list(b.keys()), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype == torch.float32, path
        assert a.shape == b.shape and torch.equal(a, b), path
        assert a.requires_grad == b.requires_grad, path
    else:
        assert a == b, path


def test_official_to_ours_to_official_reproduces_the_files(tmp_path, fixtures_dir):
    shine = Shine.from_official(fixtures_dir / CKPT, fixtures_dir / "base_model", m2p_heads=4)
    shine.to_official(tmp_path / "out")
    for name in (off.MEM_TOKENS, off.M2P_FILE, off.METALORA):
        a = torch.load(fixtures_dir / CKPT / name, weights_only=True)
        b = torch.load(tmp_path / "out" / name, weights_only=True)
        assert type(a) is type(b), name
        assert_same_tree(a, b, name)


def test_ours_to_official_to_ours_is_bit_identical(tmp_path, fixtures_dir):
    shine = Shine.from_official(fixtures_dir / CKPT, fixtures_dir / "base_model", m2p_heads=4)
    # start from a state of our own (not the fixture's), e.g. after a few updates
    params = shine.hyper_params()
    rng = np.random.default_rng(0)
    import jax
    params = jax.tree.map(lambda x: (x + rng.normal(size=x.shape) * 0.01).astype(np.float32), params)
    shine.set_hyper_params(params)
    shine.to_official(tmp_path / "a")
    again = Shine.from_official(tmp_path / "a", fixtures_dir / "base_model", m2p_heads=4)
    for (pa, xa), (pb, xb) in zip(jax.tree_util.tree_leaves_with_path(params),
                                  jax.tree_util.tree_leaves_with_path(again.hyper_params())):
        assert pa == pb and np.array_equal(xa, xb), pa


def test_additional_ift_metalora_is_concatenated_along_rank(tmp_path, fixtures_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / CKPT, d)
    shutil.copy(d / off.METALORA, d / off.EXTRA_METALORA)
    shine = Shine.from_official(d, fixtures_dir / "base_model", m2p_heads=4)
    assert shine.cfg.extra_metalora_rank == 8
    meta = shine.hyper.metalora_pytree()
    assert meta["q"]["A"].shape[-1] == 16 and meta["down"]["B"].shape[-2] == 16
    # the same Meta LoRA twice doubles its contribution: same as the single one with B doubled
    shine.to_official(tmp_path / "out")
    assert (tmp_path / "out" / off.EXTRA_METALORA).is_file()


def test_shape_mismatch_names_both_shapes(tmp_path, fixtures_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / CKPT, d)
    torch.save(torch.nn.Parameter(torch.zeros(64, 32)), d / off.MEM_TOKENS)
    with pytest.raises(off.OfficialCheckpointError, match=r"\(64, 32\).*hidden size 64"):
        Shine.from_official(d, fixtures_dir / "base_model", m2p_heads=4)
    shutil.copy(fixtures_dir / CKPT / off.MEM_TOKENS, d / off.MEM_TOKENS)
    sd = torch.load(d / off.M2P_FILE, weights_only=True)
    sd["layer_pe"] = torch.zeros(6, 64)
    torch.save(sd, d / off.M2P_FILE)
    with pytest.raises(off.OfficialCheckpointError, match=r"layer_pe is \(6, 64\).*4 layers"):
        Shine.from_official(d, fixtures_dir / "base_model", m2p_heads=4)


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/shine_jax_pwned",))


def test_pickled_code_is_never_executed(tmp_path, fixtures_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(fixtures_dir / CKPT, d)
    torch.save({"layer_pe": Boom()}, d / off.M2P_FILE)  # a torch zip whose pickle calls os.system
    if os.path.exists("/tmp/shine_jax_pwned"):
        os.remove("/tmp/shine_jax_pwned")
    with pytest.raises(off.OfficialCheckpointError, match="not a PyTorch tensor archive"):
        Shine.from_official(d, fixtures_dir / "base_model", m2p_heads=4)
    assert not os.path.exists("/tmp/shine_jax_pwned")
    (d / off.M2P_FILE).write_bytes(pickle.dumps([1, 2, 3]) + b"garbage")
    with pytest.raises(off.OfficialCheckpointError, match="not a PyTorch tensor archive"):
        Shine.from_official(d, fixtures_dir / "base_model", m2p_heads=4)


def test_cli_official_round_trip(tmp_path, fixtures_dir, capsys):
    assert cli.main(["convert", "official-to-jax", str(fixtures_dir / CKPT), str(tmp_path / "jax"),
                     "--hf", str(fixtures_dir / "base_model"), "--m2p-heads", "4"]) == 0
    assert cli.main(["convert", "jax-to-official", str(tmp_path / "jax"), str(tmp_path / "off")]) == 0
    for name in (off.MEM_TOKENS, off.M2P_FILE, off.METALORA):
        assert_same_tree(torch.load(fixtures_dir / CKPT / name, weights_only=True),
                         torch.load(tmp_path / "off" / name, weights_only=True), name)
    assert cli.main(["convert", "official-to-jax", str(tmp_path / "nope"), str(tmp_path / "x"),
                     "--hf", str(fixtures_dir / "base_model")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
