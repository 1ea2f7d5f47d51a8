"""The user-facing errors: bad input, configuration or files that a user can fix.

The CLI turns a ``UserError`` (and an ``OSError``: missing file, full disk) into one ``error:`` line and exit
status 2. Any other exception is a bug in shine_jax and keeps its traceback. ``UserError`` derives from
``ValueError`` so that callers of the library catching ``ValueError`` keep working.
"""

from __future__ import annotations

import errno


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
            where = f"writing {error.filename}: " if error.filename else ""
            return f"{where}{STORAGE_ERRNOS[error.errno]}"
        for text, reason in STORAGE_MESSAGES.items():
            if text in str(error):
                return f"{reason} ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        error = error.__cause__ or error.__context__
    return None


def user_message(error: BaseException) -> str | None:
    """The one line a user sees for an error they can fix (bad input, a missing file, a full disk), or None for
    anything else: a bug, which keeps its traceback."""
    problem = storage_problem(error)
    if problem is not None:
        return (f"{problem}; free space or choose a writable folder, then rerun (training resumes from its last "
                f"checkpoint; outputs are written aside and only then renamed into place)")
    if isinstance(error, (UserError, OSError)):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None
