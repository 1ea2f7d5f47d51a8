"""Training metrics: ``metrics.jsonl``, a tracker (TensorBoard event files via tensorboardX, or W&B), and the CLU
metric collection the step averages over a logging window."""

import json
import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

from clu import metrics as clu_metrics

from shine_jax.fileutil import atomic_text_file
from shine_jax.train.config import TRACKERS, ConfigError


@clu_metrics.flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as one level of ``a.b`` keys with scalar values (sequences and None become strings), the
    form TensorBoard's HParams plugin and W&B's config table take."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_hparams(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without torch where torch is not loaded yet: tensorboardX imports
    torch when it is installed (2 s per process, the largest part of a CLI command's start-up) only to name
    ``torch.Tensor`` in its type hints; the scalars logged here are Python floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # a None entry makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardTracker:
    """Scalars and the stage's hyperparameters as TensorBoard event files, written by tensorboardX (no
    TensorFlow)."""

    def __init__(self, directory: pathlib.Path):
        self.writer = _summary_writer_class()(logdir=str(directory), flush_secs=30)

    def hparams(self, hparams: dict, metrics: dict) -> None:
        from tensorboardX.summary import hparams as hparams_summaries

        # into this writer's file: SummaryWriter.add_hparams opens a second writer, whose file name (time and
        # host) can be this one's
        for summary in hparams_summaries(hparams, metrics):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run (offline unless ``WANDB_MODE`` says otherwise, so a run never needs the network;
    ``wandb sync DIR`` uploads it later). Its files go under the stage folder."""

    def __init__(self, directory: pathlib.Path, name: str, project: str):
        try:
            import wandb
        except ImportError:
            raise ConfigError("tracker=wandb needs the wandb package: pip install -e '.[wandb]'") from None
        self.run = wandb.init(project=project, name=name, dir=str(directory), mode=os.environ.get("WANDB_MODE",
                              "offline"), reinit="create_new")

    def hparams(self, hparams: dict, metrics: dict) -> None:
        self.run.config.update(hparams, allow_val_change=True)

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step, commit=True)  # a logged step is complete: commit it now

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() may return before the service has written the run's record log (under load a test read only its
        # header); tearing the service down waits for it. The next run in this process starts a new service.
        wandb.teardown()


class MetricsLog:
    """Writes one JSON object per logged step to ``metrics.jsonl`` and the same scalars to the tracker."""

    def __init__(self, directory: pathlib.Path, resume_step: int = 0, tracker: str = "tensorboard",
                 run_name: str = "run", project: str = "shine_jax"):
        if tracker not in TRACKERS:
            raise ConfigError(f"tracker must be one of {', '.join(TRACKERS)}, got {tracker!r}")
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.tracker = None
        if tracker == "tensorboard":
            self.tracker = TensorBoardTracker(self.directory / "tensorboard")
        elif tracker == "wandb":
            self.tracker = WandbTracker(self.directory, run_name, project)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the restored checkpoint, so the log equals an uninterrupted run's."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash or a full disk mid-append
                continue
            if isinstance(row, dict) and row.get("step", step + 1) <= step:
                keep.append(line)
        with atomic_text_file(self.path) as f:  # a crash here keeps the whole old log, never half of it
            f.write("".join(line + "\n" for line in keep))

    def hparams(self, config: Mapping[str, Any], metrics: dict[str, float] | None = None) -> None:
        """Record the stage's configuration once (TensorBoard HParams / W&B config)."""
        if self.tracker is not None:
            self.tracker.hparams(flat_hparams(config), dict(metrics or {}))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tracker is not None:
            self.tracker.scalars(int(step), {k: v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Throughput:
    """Tokens, steps and model FLOPs per second since the last ``rates()``."""

    def __init__(self):
        self.t0, self.tokens, self.steps, self.flops = time.perf_counter(), 0, 0, 0.0

    def add(self, tokens: int, flops: float = 0.0) -> None:
        self.tokens += tokens
        self.steps += 1
        self.flops += flops

    def rates(self) -> tuple[float, float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        r = (self.tokens / dt, self.steps / dt, self.flops / dt)
        self.t0, self.tokens, self.steps, self.flops = time.perf_counter(), 0, 0, 0.0
        return r
