"""Folder formats: a shine_jax base folder, a SHINE folder, and how a SHINE folder refers to its frozen base.

A base folder (``BaseModel.save``) holds ``model.json`` (architecture, the original HF config, the weights' dtype),
``params/`` (Orbax) and ``tokenizer/``. A SHINE folder holds ``shine.json`` (the hypernetwork config, the evidence
length) and ``hyper/`` (Orbax), and its base as below.

A trained SHINE stage writes ``shine.json`` + ``hyper/`` (the hypernetwork) + ``base.json``, a reference to the
frozen base it was trained on: the base folder's path (relative to the SHINE folder and absolute), its kind
(``shine_jax``: a ``BaseModel.save`` folder; ``hf``: a Hugging Face folder, SHINE's three tokens added on load),
its architecture, and a content hash. For a Qwen3-8B base that is a few hundred bytes instead of a ~32 GB copy per
stage. ``Shine.save(..., self_contained=True)`` (``shine-jax convert bundle``) writes the base into ``base/``
instead, for a folder that travels alone.

The content hash is a SHA-256 over every file of the base folder (relative path and bytes). Re-reading a large
base on every load would be slow, so the reference also stores each file's size and modification time, and the
hash is recomputed only when one of those changed (as git's index does): a base changed since training is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

from shine_jax.errors import UserError

MODEL_JSON, PARAMS_DIR, TOKENIZER_DIR = "model.json", "params", "tokenizer"  # a base folder
SHINE_JSON, HYPER_DIR = "shine.json", "hyper"  # a SHINE folder
BASE_REF = "base.json"
BASE_DIR = "base"
KINDS = ("shine_jax", "hf")
_CHUNK = 1 << 22


class BaseReferenceError(UserError):
    """The base a SHINE folder refers to is missing or has changed since training."""


@dataclasses.dataclass(frozen=True)
class BaseOrigin:
    """Where a loaded base model came from: enough to refer to it instead of copying it."""

    kind: str  # one of KINDS
    path: pathlib.Path


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".shine_jax"))


def file_stats(folder: pathlib.Path) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of every file under ``folder``."""
    out = {}
    for p in _files(folder):
        st = p.stat()
        out[p.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def content_hash(folder: pathlib.Path) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``folder``, in sorted order."""
    h = hashlib.sha256()
    for p in _files(folder):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def reference(origin: BaseOrigin, model: dict[str, Any], shine_dir: pathlib.Path) -> dict[str, Any]:
    """The ``base.json`` of a SHINE folder written at ``shine_dir`` whose base came from ``origin``."""
    folder = origin.path.absolute()
    return {"kind": origin.kind, "path": str(folder),
            "relative_path": os.path.relpath(folder, shine_dir.absolute()), "model": model,
            "sha256": content_hash(folder), "files": file_stats(folder)}


def write_reference(shine_dir: pathlib.Path, ref: dict[str, Any]) -> None:
    (shine_dir / BASE_REF).write_text(json.dumps(ref, indent=2))


def read_reference(shine_dir: pathlib.Path) -> dict[str, Any] | None:
    path = shine_dir / BASE_REF
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_base(shine_dir: pathlib.Path, *, verify: bool = True) -> BaseOrigin:
    """The base of a SHINE folder: its own ``base/`` (a self-contained folder), else the folder its ``base.json``
    refers to (the relative path first, so a moved workdir keeps working), checked against the recorded hash."""
    shine_dir = shine_dir.absolute()
    if (shine_dir / BASE_DIR).is_dir():
        return BaseOrigin("shine_jax", shine_dir / BASE_DIR)
    ref = read_reference(shine_dir)
    if ref is None:
        raise BaseReferenceError(f"{shine_dir} has neither {BASE_DIR}/ nor {BASE_REF}; it is not a complete SHINE folder")
    if ref.get("kind") not in KINDS:
        raise BaseReferenceError(f"{shine_dir / BASE_REF}: unknown base kind {ref.get('kind')!r}")
    candidates = [(shine_dir / ref["relative_path"]).resolve(), pathlib.Path(ref["path"])]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise BaseReferenceError(f"{shine_dir} refers to its base at {ref['path']}, which is missing; restore that "
                                 f"folder (or train again), or keep SHINE folders self-contained with "
                                 f"`shine-jax convert bundle`")
    if verify and file_stats(folder) != ref["files"] and content_hash(folder) != ref["sha256"]:
        raise BaseReferenceError(f"the base at {folder} has changed since {shine_dir} was trained on it (content "
                                 f"hash differs); the hypernetwork only fits the base it was trained with")
    return BaseOrigin(ref["kind"], folder)


def base_model_dict(shine_dir: pathlib.Path) -> dict[str, Any] | None:
    """The base architecture (``ModelConfig.to_dict()``) of a SHINE folder without loading any weights."""
    shine_dir = pathlib.Path(shine_dir)
    ref = read_reference(shine_dir)
    if ref is not None:
        return ref["model"]
    return read_model_meta(shine_dir / BASE_DIR)["model"] if is_model_folder(shine_dir / BASE_DIR) else None


# ------------------------------------------------------------------------------------------ the two folders
def is_model_folder(folder: str | os.PathLike) -> bool:
    return (pathlib.Path(folder) / MODEL_JSON).is_file()


def write_model_meta(folder: pathlib.Path, model: dict, hf_config: dict | None, param_dtype: str) -> None:
    (folder / MODEL_JSON).write_text(json.dumps({"model": model, "hf_config": hf_config, "param_dtype": param_dtype},
                                                indent=2))


def read_model_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a base folder: ``model`` (the architecture), ``hf_config``, ``param_dtype``."""
    folder = pathlib.Path(folder)
    if not is_model_folder(folder):
        raise FileNotFoundError(f"{folder} has no {MODEL_JSON}; it is not a shine_jax model folder")
    return json.loads((folder / MODEL_JSON).read_text())


def is_shine_folder(folder: str | os.PathLike) -> bool:
    return (pathlib.Path(folder) / SHINE_JSON).is_file()


def write_shine_meta(folder: pathlib.Path, hyper: dict, max_evidence_length: int | None) -> None:
    (folder / SHINE_JSON).write_text(json.dumps({"hyper": hyper, "max_evidence_length": max_evidence_length},
                                                indent=2))


def read_shine_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """``shine.json`` of a SHINE folder: ``hyper`` (``HyperConfig`` as a dict), ``max_evidence_length``."""
    return json.loads((pathlib.Path(folder) / SHINE_JSON).read_text())
