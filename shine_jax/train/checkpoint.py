"""Orbax checkpoints of a training stage: train state + Grain iterator state + metadata, atomic and resumable.

``CheckpointManager`` writes each step into a temporary directory and renames it when complete, so a process
killed mid-save leaves the previous checkpoint as the latest. That finalisation is Orbax's integrity check; it
keeps no checksum of the arrays, so a finalised step damaged later (a file deleted or truncated) is found by
restoring it, and ``restore_latest_good`` then falls back to the previous step. Saving is asynchronous (the step loop goes on while
the arrays are written); a state with non-finite values is refused, never saved. The directory may be local or a
``gs://bucket/prefix`` URI: paths are ``etils.epath`` paths, which Orbax reads and writes natively.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from shine_jax.errors import UserError


class CheckpointError(UserError):
    """No checkpoint of a stage can be restored (a user-facing error: the CLI prints one line)."""


class StageCheckpointer:
    def __init__(self, directory: str | os.PathLike, keep: int, async_save: bool = True):
        self.directory = resolve_dir(directory)
        # Step folders are made before save() returns, never in the background: Grain's iterator handler writes
        # its file without waiting for a background-made folder, so with several processes a process other than
        # 0 could write before process 0 had made it (FileNotFoundError in that process's save thread, the others
        # waiting for it at the commit barrier until the job's shutdown barrier failed).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False))
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, iterator, meta: dict, force: bool = False) -> bool:
        """Save step ``step`` unless the state holds NaN/inf; ``force``: even where the manager's policy would
        skip it (a preemption between two ``checkpoint_every`` steps)."""
        if not all_finite(state):
            return False
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(iterator),
            meta=ocp.args.JsonSave(meta)), force=force)
        return True

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: Any, iterator) -> tuple[Any, dict]:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(iterator),
            meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def restore_latest_good(self, abstract_state: Any, iterator,
                            check: Callable[[dict], None] = lambda meta: None) -> tuple[int, Any, dict] | None:
        """Restore the newest step that restores; None when there is no checkpoint at all.

        A step that fails to read (a file deleted or truncated, a crash mid-copy) is set aside as
        ``.unreadable-<step>`` beside the steps, never deleted, with one warning line, and the next older step is
        tried. ``check(meta)`` vets a readable step (a different model raises there, which is not corruption). When
        every step fails, one error says so. With several processes (one checkpoint directory that they share) a
        step counts as restored only where it restored on every process, so that all of them resume at one step."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            meta, error = _attempt(self.read_meta, step)
            if not _on_every_process(error is None):
                self._set_aside(step, error)
                continue
            check(meta)
            restored, error = _attempt(self.restore, step, abstract_state, iterator)
            if not _on_every_process(error is None):
                self._set_aside(step, error)
                continue
            return (step, *restored)
        if steps:
            raise CheckpointError(f"no checkpoint in {self.directory} can be restored (steps {steps} set aside as "
                                  f".unreadable-*); move them away to start the stage over")
        return None

    def _set_aside(self, step: int, error: Exception | None) -> None:
        """Rename step ``step`` to ``.unreadable-<step>`` (process 0 alone: the directory is shared; the others wait
        for it) and let the manager forget it. ``error``: this process's failure, None where only another failed."""
        source = self.directory / str(step)
        target = self.directory / f".unreadable-{step}"
        n = 1
        while target.exists():
            target, n = self.directory / f".unreadable-{step}.{n}", n + 1
        _barrier(f"shine_jax: named the folder for checkpoint {step}")  # before process 0 renames
        if jax.process_index() == 0:
            source.rename(target)
        _barrier(f"shine_jax: set aside checkpoint {step}")
        self.manager.reload()
        if error is None:
            why = "it failed to restore on another process"
        else:
            why = f"{type(error).__name__}: {(str(error).splitlines() or [type(error).__name__])[0][:200]}"
        warnings.warn(f"checkpoint step {step} in {self.directory} does not restore ({why}); set aside as "
                      f"{target.name}, trying the previous step", stacklevel=2)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _attempt(fn: Callable[..., Any], *args) -> tuple[Any, Exception | None]:
    """``(fn(*args), None)``, or ``(None, the exception)``: any failure to read means the step is unusable."""
    try:
        return fn(*args), None
    except Exception as e:  # noqa: BLE001
        return None, e


def _on_every_process(ok: bool) -> bool:
    """``ok`` on every process (each process reads its own shards of a step, so one may fail alone)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def is_uri(path: str | os.PathLike) -> bool:
    """``gs://bucket/...`` (any ``scheme://``) as opposed to a local path."""
    return "://" in os.fspath(path)


def resolve_dir(path: str | os.PathLike) -> epath.Path:
    """A checkpoint directory as an ``epath.Path``: URIs as given, local paths made absolute."""
    return epath.Path(path) if is_uri(path) else epath.Path(pathlib.Path(path).absolute())


def all_finite(tree: Any) -> bool:
    """Whether every floating-point value of ``tree`` is finite, the same answer on every process.

    Checked on the host, shard by shard (each process reads its own shards, as a save does), then agreed with one
    small collective. One XLA program reducing every leaf took XLA:CPU 4 s to compile for a tiny SHINE state, 17 s
    for 150 leaves: a cost paid at the first save of every run, larger than the check it replaces."""
    ok = True
    for x in jax.tree.leaves(tree):
        dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
        if not jnp.issubdtype(dtype, jnp.floating):  # also bfloat16, which numpy does not call floating
            continue
        shards = [s.data for s in x.addressable_shards] if isinstance(x, jax.Array) else [x]
        ok = ok and all(bool(np.isfinite(np.asarray(s)).all()) for s in shards)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        ok = bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))
    return bool(ok)


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with the live shardings) for a restore into the same placement."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)


def model_signature(tree: Any) -> dict[str, list[int]]:
    """Parameter paths and shapes: a workdir checkpoint of another model is refused by comparing these."""
    return {jax.tree_util.keystr(p): list(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def describe_mismatch(saved: dict, current: dict) -> str:
    for k in sorted(set(saved) | set(current)):
        if saved.get(k) != current.get(k):
            return f"{k}: checkpoint {saved.get(k)} vs this config {current.get(k)}"
    return ""


