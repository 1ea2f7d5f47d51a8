"""The user-facing errors: bad input, configuration or files that a user can fix.

The CLI turns a ``UserError`` (and an ``OSError``: missing file, full disk) into one ``error:`` line and exit
status 2. Any other exception is a bug in shine_jax and keeps its traceback. ``UserError`` derives from
``ValueError`` so that callers of the library catching ``ValueError`` keep working.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil


class UserError(ValueError):
    """Input a user can fix: the message says what is wrong and, where it can, how to fix it."""


class InputError(UserError):
    """A document, record or command-line value that cannot be used as given."""


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}
STORAGE_MESSAGES = {"No space left on device": "no space left on the device",
                    "Read-only file system": "read-only file system"}


def storage_problem(error: BaseException) -> str | None:
    """Disk full, quota, read-only or forbidden output, found anywhere in the chain of causes (Orbax, tfds and
    safetensors wrap the OSError in their own exceptions): one line naming the path where known, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            verb = "" if error.errno == errno.EACCES else "writing "  # a forbidden file may be read or written
            where = f"{verb}{error.filename}: " if error.filename else ""
            return f"{where}{STORAGE_ERRNOS[error.errno]}"
        for text, reason in STORAGE_MESSAGES.items():
            if text in str(error):
                return f"{reason} ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike, needed_bytes: int | None = None, resumable: bool = False):
    """Mark a block as writing ``path``: a full disk, a quota or a read-only folder met inside it carries the path,
    the space needed (where the caller knows it) and whether rerunning resumes, for the one line the user sees."""
    try:
        yield
    except BaseException as e:
        if storage_problem(e) is not None and not hasattr(e, "shine_output"):
            e.shine_output = (pathlib.Path(path), needed_bytes, resumable)
        raise


def _storage_filename(error: BaseException | None) -> str | None:
    """The file named by the OSError behind a storage problem, if it names one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _free_bytes(path: pathlib.Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def user_message(error: BaseException) -> str | None:
    """The one line a user sees for an error they can fix (bad input, a missing file, a full disk), or None for
    anything else: a bug, which keeps its traceback."""
    problem = storage_problem(error)
    if problem is not None:
        path, needed, resumable = getattr(error, "shine_output", (None, None, False))
        filename = _storage_filename(error)
        # the output being written names the place, unless the failing file lies elsewhere (a checkpoint_dir,
        # a data dir, a file being read): then that file does, and the free space is counted there
        home = None if path is None else pathlib.Path(path).absolute()
        home = home.parent if home is not None and home.suffix else home  # a file's temporary siblings count
        inside = home is not None and (filename is None or pathlib.Path(filename).absolute().is_relative_to(home))
        details = [f"output {path}"] if inside else []
        details += [f"needs about {_mb(needed)}"] if inside and needed else []
        free = _free_bytes(pathlib.Path(filename) if filename else pathlib.Path(path)) if (filename or path) else None
        details += [f"{_mb(free)} free there"] if free is not None else []
        where = f" ({', '.join(details)})" if details else ""
        then = ("training resumes from its last good checkpoint" if resumable else
                "nothing half-written was kept: outputs are written aside and renamed into place when complete")
        return f"{problem}{where}; free space or choose a writable folder, then rerun ({then})"
    if isinstance(error, (UserError, OSError)):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None
