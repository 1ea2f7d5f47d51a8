"""Multi-host start-up: ``jax.distributed.initialize`` driven by flags or environment variables.

On TPU pods and SLURM/Kubernetes GPU jobs JAX finds the coordinator itself (call with nothing set). Elsewhere, set
``SHINE_JAX_COORDINATOR=host:port``, ``SHINE_JAX_NUM_PROCESSES`` and ``SHINE_JAX_PROCESS_ID`` (or pass the
``--coordinator/--num-processes/--process-id`` flags). On CPU the cross-process collectives use gloo, which is how
the tests run several processes on localhost exactly as a pod would.
"""

from __future__ import annotations

import os

from shine_jax.errors import InputError

ENV = {"coordinator": "SHINE_JAX_COORDINATOR", "num_processes": "SHINE_JAX_NUM_PROCESSES",
       "process_id": "SHINE_JAX_PROCESS_ID", "timeout": "SHINE_JAX_INIT_TIMEOUT"}


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int | None = None, auto: bool = False) -> bool:
    """Join the multi-process job if one is configured; returns whether ``jax.distributed`` was initialised.

    An unreachable coordinator fails after ``timeout_s`` (default 120 s) with a one-line error naming it.
    """
    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    num_processes = num_processes or _int_env(ENV["num_processes"])
    process_id = process_id if process_id is not None else _int_env(ENV["process_id"])
    timeout_s = timeout_s or _int_env(ENV["timeout"]) or 120
    if not coordinator and not auto:
        return False
    import jax

    if coordinator and (num_processes is None or process_id is None):
        raise InputError(f"coordinator {coordinator} given but not both the number of processes and this process's "
                         f"id (set {ENV['num_processes']} and {ENV['process_id']})")
    if coordinator and process_id != 0:  # process 0 hosts the coordinator; the others must reach it first
        wait_for_coordinator(coordinator, timeout_s, process_id, num_processes)
    # only affects CPU devices; must be set before the backend starts (so no jax.devices() call here)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    except Exception as e:  # grpc / XLA runtime errors for a coordinator that never answers
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConnectionError(f"could not join the job at coordinator {coordinator or '(auto-detected)'} within "
                              f"{timeout_s}s as process {process_id} of {num_processes}: {first}") from None
    return True


def wait_for_coordinator(address: str, timeout_s: float, process_id=None, num_processes=None) -> None:
    """Poll the coordinator's TCP port; XLA's own client aborts the process on failure, so we check first."""
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"coordinator address {address!r} must look like host:port")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"could not join the job at coordinator {address} within {timeout_s}s as "
                                      f"process {process_id} of {num_processes}: {e.strerror or e}") from None
            time.sleep(0.5)


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None
