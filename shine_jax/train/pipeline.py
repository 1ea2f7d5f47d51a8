"""A pipeline of stages in one workdir: the one rule the demo and the sweep share for what to train.

A stage finished with the same settings (``config.settings_hash``, recorded in its ``summary.json``) is reused; one
finished with other settings is never silently kept (``StageConflict``); the others train, in order, each from the
previous one's ``final/``. How a stage trains is the caller's: the demo runs it in this process
(``loop.run_stage``), the sweep in a child process (``python -m shine_jax.train``)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

from shine_jax.train.config import ConfigError, reuse_problem


class StageConflict(ConfigError):
    """A stage folder holds a finished stage trained with other settings than the ones asked for."""


def stage_action(stage_dir: pathlib.Path, cfg) -> str:
    """``"reuse"`` (finished with these settings) or ``"train"`` (not finished: a fresh start or a resume);
    ``StageConflict`` when it finished with other settings."""
    problem = reuse_problem(stage_dir, cfg)
    if problem is None:
        return "reuse"
    if (stage_dir / "final").is_dir():
        raise StageConflict(f"{stage_dir / 'final'} was {problem}; delete {stage_dir} to train it again, or choose "
                            f"another --workdir")
    return "train"


def run_pipeline(configs: Mapping[str, Any], workdir: pathlib.Path, train: Callable[[str, Any], Any],
                 reuse: Callable[[str, Any], Any] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every stage of ``configs`` (stage -> its config, in pipeline order) in ``workdir``: ``reuse(stage, cfg)``
    for a stage finished with the same settings (None without ``reuse``), ``train(stage, cfg)`` for the others.
    Returns stage -> what that call returned; stops at the first exception (a ``StageConflict`` included)."""
    out = {}
    for stage, cfg in configs.items():
        stage_dir = pathlib.Path(workdir) / stage
        if stage_action(stage_dir, cfg) == "reuse":
            log(f"{stage}: already trained with these settings in {stage_dir / 'final'} (delete it to train it again)")
            out[stage] = reuse(stage, cfg) if reuse else None
        else:
            log(f"training stage {stage} ({cfg.steps} steps)")
            out[stage] = train(stage, cfg)
    return out
