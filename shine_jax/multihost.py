"""Saving from a multi-host job: gather the parameters, write the folder once, give every host a local copy.

With several processes (``jax.distributed``) each host has its own local disk, and the next stage on each host reads
``<workdir>/<prev>/final`` there. So a model folder is written like this, by every process together:

* ``to_host`` gathers every parameter to every host as a numpy array (a collective);
* ``write_on_every_host`` lets process 0 write the folder (atomically, through ``atomic_dir``) with an Orbax
  checkpointer that coordinates with no other process (``local_checkpointer``), then sends the folder's bytes to
  the hosts that do not see process 0's copy at their own path; each unpacks it atomically. Hosts that share a
  filesystem (several processes on one machine, or an NFS workdir) are found with marker files, and only one
  process per filesystem writes, so they never replace each other's folder.

Why not let every process run its own Orbax save: Orbax 0.12.8 writes numpy arrays from process 0 only
(``NumpyHandler``), even with ``MultiprocessingOptions(primary_host=...)`` naming another process, so the other hosts'
folders would lack the arrays. Copying process 0's folder also makes every host's copy byte-identical.

With one process everything is a plain local save, exactly as before.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import tarfile
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

CHUNK_BYTES = 64 << 20  # the folder travels in pieces of at most this size (device memory per piece)
GATHER_BYTES = 256 << 20  # a sharded leaf is gathered in row blocks of about this size (each block is replicated
#                           on every device for a moment: a whole stacked weight of a large model might not fit)


def to_host(tree: Any) -> Any:
    """Every leaf as a numpy array with the whole value. A leaf sharded over several processes is gathered
    (``process_allgather``), so with several processes every process must call this with the same tree."""
    return jax.tree.map(_leaf_to_host, tree)


def _leaf_to_host(x) -> np.ndarray:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    rows = x.shape[0] if x.ndim else 1
    block = max(1, rows * GATHER_BYTES // max(x.nbytes, 1))
    if block >= rows:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.concatenate([np.asarray(multihost_utils.process_allgather(x[i:i + block], tiled=True))
                           for i in range(0, rows, block)])


def local_checkpointer():
    """An Orbax ``StandardCheckpointer`` that waits for no other process: the default one with a single
    process; with several, one restricted to this process (for restores anywhere, saves on process 0 only)."""
    import orbax.checkpoint as ocp

    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def restore(path: str | os.PathLike) -> Any:
    """An Orbax pytree of our model folders. One process: as saved (``restore`` without a target). Several:
    numpy arrays read by this process alone, whatever topology saved them (a folder written by a one-host run
    holds arrays with their device placement, which a multi-host job cannot take as they are)."""
    with local_checkpointer() as ckptr:
        if jax.process_count() == 1:
            return ckptr.restore(path)
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), ckptr.metadata(path).item_metadata)
        return ckptr.restore(path, target)


def write_on_every_host(out_dir: str | os.PathLike, write: Callable[[pathlib.Path], Any],
                        overwrite: bool = False) -> pathlib.Path:
    """Run ``write(out_dir)``, which must put the complete folder at ``out_dir`` atomically (``atomic_dir``).

    One process: just that. Several: every process calls this with its own local ``out_dir``; process 0 writes
    and every other host ends up with a byte copy at its ``out_dir`` (replacing what is there only if
    ``overwrite``). Returns once every host has its folder; if any host failed, every process raises.
    """
    out_dir = pathlib.Path(out_dir).absolute()
    if jax.process_count() == 1:
        write(out_dir)
        return out_dir
    from jax.experimental import multihost_utils

    me = jax.process_index()
    unpack = _first_on_this_filesystem(out_dir) and me != 0  # (a collective: every process takes part)
    needed = bool(np.asarray(multihost_utils.process_allgather(np.int32(unpack))).any())
    error, size = None, 0
    with tempfile.TemporaryFile(dir=out_dir.parent) as archive:  # the parent exists: the markers are there
        if me == 0:
            try:
                write(out_dir)
                if needed:
                    with tarfile.open(fileobj=archive, mode="w") as tar:
                        tar.add(out_dir, arcname=".")
                    size = archive.tell()
            except BaseException as e:  # noqa: BLE001 - the others must hear of it before this process raises
                error = e
        # the status and size from process 0 (int32 words: the jax arrays are 32-bit)
        status = multihost_utils.broadcast_one_to_all(
            np.asarray([error is None, size >> 30, size & ((1 << 30) - 1)], np.int32))
        if not status[0]:
            if error is not None:
                raise error
            raise RuntimeError(f"process 0 could not write {out_dir} (see its log); nothing was copied")
        size = (int(status[1]) << 30) | int(status[2])
        if needed:
            error = _broadcast_file(archive, size, receive=unpack)
        if unpack and error is None:
            try:
                _unpack(archive, out_dir, overwrite)
            except BaseException as e:  # noqa: BLE001
                error = e
    failed = np.flatnonzero(np.asarray(multihost_utils.process_allgather(np.int32(error is not None))))
    if error is not None:
        raise error
    if failed.size:
        raise RuntimeError(f"{out_dir} could not be copied to process(es) {failed.tolist()} (see their logs)")
    return out_dir


def _first_on_this_filesystem(out_dir: pathlib.Path) -> bool:
    """Whether this process has the lowest index among the processes that see the same ``out_dir`` as it does.

    Each process leaves a marker named after a token shared by this call beside ``out_dir``; after a barrier each
    one lists the markers it can see, and after a second barrier removes its own."""
    from jax.experimental import multihost_utils

    token = bytes(multihost_utils.broadcast_one_to_all(
        np.frombuffer(secrets.token_bytes(8), np.uint8))).hex()
    prefix = f".{out_dir.name}.{token}.host"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    marker = out_dir.parent / f"{prefix}{jax.process_index()}"
    marker.touch()
    try:
        multihost_utils.sync_global_devices(f"shine_jax markers written {token}")
        seen = [int(p.name[len(prefix):]) for p in out_dir.parent.iterdir() if p.name.startswith(prefix)]
        multihost_utils.sync_global_devices(f"shine_jax markers read {token}")
    finally:
        marker.unlink(missing_ok=True)
    return min(seen) == jax.process_index()


def _broadcast_file(archive, size: int, receive: bool) -> BaseException | None:
    """Send process 0's ``archive`` (``size`` bytes) to every process in equal pieces; receivers keep it in
    their ``archive``. Every process takes part in every piece, so a local error is returned, not raised."""
    from jax.experimental import multihost_utils

    error = None
    chunk = max(1, min(CHUNK_BYTES, size))
    source = jax.process_index() == 0
    if source:
        archive.seek(0)
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        piece = np.zeros(chunk, np.uint8)
        try:
            if source and error is None:
                piece[:n] = np.frombuffer(archive.read(n), np.uint8)
        except BaseException as e:  # noqa: BLE001 - keep taking part (the receivers then fail to unpack)
            error = e
        piece = multihost_utils.broadcast_one_to_all(piece)
        if receive and error is None:
            try:
                archive.write(np.asarray(piece[:n]).tobytes())
            except BaseException as e:  # noqa: BLE001 (a full disk): keep taking part, report at the end
                error = e
    return error


def _unpack(archive, out_dir: pathlib.Path, overwrite: bool) -> None:
    from shine_jax.fileutil import atomic_dir

    archive.seek(0)
    with atomic_dir(out_dir, overwrite) as tmp, tarfile.open(fileobj=archive, mode="r") as tar:
        tar.extractall(tmp, filter="data")
