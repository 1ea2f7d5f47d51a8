"""How every entry point (``shine-jax``, ``python -m shine_jax.train``, ``python -m shine_jax.eval``) ends: a
user-fixable error is one ``error:`` line and exit status 2, anything else keeps its traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from shine_jax.errors import user_message
from shine_jax.fileutil import write_json_atomic


def run_entry(work: Callable[[], Any], result: str | os.PathLike | None = None) -> int:
    """Run ``work()``; 0 when it returns. A ``UserError`` / ``OSError`` (``errors.user_message``) becomes one
    ``error:`` line on stderr and status 2 (an error may carry its own ``exit_status``); with ``result`` the outcome is also written there as JSON, so a parent
    process never reads logs: what ``work`` returned, or ``{"error": "<the line>"}``."""
    try:
        out = work()
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise  # an internal bug keeps its traceback
        print(f"error: {message}", file=sys.stderr)
        if result:
            write_json_atomic(result, {"error": message})
        return getattr(e, "exit_status", 2)  # 2, or 143 for a stage stopped by SIGTERM
    if result:
        write_json_atomic(result, out)
    return 0
