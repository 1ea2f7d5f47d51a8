"""Atomic outputs: a folder or JSON file is either the old one or the complete new one, never half of either."""

from __future__ import annotations

import json
import os

import pytest

from shine_jax import fileutil


def write_folder(path, text, overwrite=True, fail=False):
    with fileutil.atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / "a.txt").write_text(text)
        if fail:
            raise RuntimeError("crash while writing")


def test_atomic_dir_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "out"
    write_folder(out, "one")
    write_folder(out, "two")
    assert (out / "a.txt").read_text() == "two" and oct(out.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or set-aside folder left


def test_a_failed_write_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    write_folder(out, "old")
    with pytest.raises(RuntimeError):
        write_folder(out, "new", fail=True)
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_old_folder_survives_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_folder(out, "old")
    real_replace, calls = os.replace, []

    def replace(src, dst):  # the old folder is set aside, then moving the new one in fails
        calls.append((os.fspath(src), os.fspath(dst)))
        if len(calls) == 2:
            assert not out.exists() and any(p.name.startswith(".out.replaced-") for p in tmp_path.iterdir())
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(fileutil.os, "replace", replace)
    with pytest.raises(OSError):
        write_folder(out, "new")
    monkeypatch.setattr(fileutil.os, "replace", real_replace)
    assert (out / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_json_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    fileutil.write_json_atomic(path, {"a": 1, "p": tmp_path})  # non-JSON values are written as strings
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}
    monkeypatch.setattr(fileutil.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        fileutil.write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text())["a"] == 1 and [p.name for p in tmp_path.iterdir()] == ["r.json"]
