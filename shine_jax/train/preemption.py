"""Stopping for a preemption: SIGTERM (a preempted TPU VM, the end of a SLURM job, ``kill``) ends the stage at a
step boundary with a checkpoint of that step, so the same command resumes exactly there.

One process: a SIGTERM handler sets a flag that the loop reads after each step. Several processes: every process
must stop at the same step, so the decision is Orbax's preemption sync point (``CheckpointManager
.reached_preemption``, backed by JAX's distributed preemption notifier, which listens to SIGTERM itself).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax

from shine_jax.errors import UserError

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Preempted(UserError):
    """The stage stopped on SIGTERM after saving a checkpoint (one line, exit status 143)."""

    exit_status = EXIT_STATUS


class PreemptionWatch:
    def __init__(self, manager):
        self.manager = manager  # the stage's Orbax CheckpointManager
        self.signalled = threading.Event()

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return bool(self.manager.reached_preemption(step))
        return self.signalled.is_set()


@contextlib.contextmanager
def watch_sigterm(manager) -> Iterator[PreemptionWatch]:
    """A ``PreemptionWatch`` with SIGTERM caught while the stage runs (the previous handler restored after)."""
    watch = PreemptionWatch(manager)
    own = jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: watch.signalled.set()) if own else None
    try:
        yield watch
    finally:
        if own:
            signal.signal(signal.SIGTERM, previous)
