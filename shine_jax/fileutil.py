"""Atomic output folders: everything shine_jax writes is assembled aside and renamed into place when complete."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from shine_jax.errors import UserError


@contextlib.contextmanager
def atomic_text_file(path: str | os.PathLike) -> Iterator[Any]:
    """A text file written aside (a temporary file of its own per call: processes sharing a workdir may race) and
    renamed into place when complete, so a reader never sees half a file; removed on any error or Ctrl-C."""
    path = pathlib.Path(path).absolute()
    created = [p for p in path.parents if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[list[pathlib.Path]]:
    """Temporary siblings of ``paths`` (same suffix, for writers that infer the format from it) to write into; once
    every one is complete they are renamed into place, and on any error all are removed: a set of outputs that
    belong together (a results table, its Markdown and its plot) is never left half-written."""
    paths = [pathlib.Path(p).absolute() for p in paths]
    created = sorted({p for path in paths for p in path.parents if not p.exists()}, key=lambda p: -len(p.parts))
    tmps = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
            os.close(fd)
            tmps.append(pathlib.Path(tmp))
        yield list(tmps)
        for tmp, path in zip(tmps, paths):
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``atomic_text_file``)."""
    with atomic_text_file(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


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
    it is removed, so a crash never leaves a half-written folder behind.

    An existing ``out_dir`` is first renamed aside (``.NAME.replaced-PID``) and deleted only once the new folder
    is in place: a crash between the two renames leaves both complete folders on disk, never neither."""
    out_dir = pathlib.Path(out_dir).absolute()
    if out_dir.is_symlink():  # replace what the link points to (models/tiny_base -> the package's), not the link
        out_dir = out_dir.resolve()
    created = [p for p in out_dir.parents if not p.exists()]  # made here: removed again if nothing lands in them
    prepare_output_dir(out_dir, overwrite)
    try:
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        if out_dir.exists():
            aside = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(out_dir, aside)
            try:
                os.replace(tmp, out_dir)
            except BaseException:
                os.replace(aside, out_dir)  # put the old folder back
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def _remove_empty(folders: list[pathlib.Path]) -> None:
    """Remove those of ``folders`` (innermost first) that are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            continue


class WorkdirBusyError(UserError):
    """Another live process holds the workdir (a user-facing error: the CLI prints one line)."""


LOCK_NAME = ".shine_jax.lock"


def _holder(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """One writer per workdir: ``<workdir>/.shine_jax.lock`` names the holder (pid, host). A second process gets
    ``WorkdirBusyError``; a lock left by a dead process of this host is taken over with a warning. Re-entrant
    within a process (``demo`` holds it around stages that take it too)."""
    workdir = pathlib.Path(workdir)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder == me:
                yield  # already ours: the outer holder releases it
                return
            if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                warnings.warn(f"taking over the stale lock {path} of process {holder['pid']}, which is gone",
                              stacklevel=3)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}" if holder else "another process"
            raise WorkdirBusyError(f"{workdir} is in use by {who} (lock {path}); wait for it to finish or use "
                                   f"another workdir") from None
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    try:
        yield
    finally:
        if _holder(path) == me:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if created:  # a run refused before writing anything leaves no empty workdir behind
            with contextlib.suppress(OSError):
                workdir.rmdir()
