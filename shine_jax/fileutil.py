"""Atomic output folders: everything shine_jax writes is assembled aside and renamed into place when complete."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator


def prepare_output_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out_dir`` unless ``overwrite``; create its parent."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary sibling of ``out_dir`` to write into; on success it replaces ``out_dir``, on any error
    it is removed, so a crash never leaves a half-written folder behind."""
    out_dir = pathlib.Path(out_dir).absolute()
    prepare_output_dir(out_dir, overwrite)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        os.chmod(out_dir, 0o755)  # mkdtemp makes 0700 folders
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
