"""Training metrics: CLU metric writers (TensorBoard event files) + ``metrics.jsonl`` + a console progress bar."""


import json
import pathlib
import time
from typing import Any

from clu import metrics as clu_metrics


@clu_metrics.flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")


class MetricsLog:
    """Writes one JSON object per logged step to ``metrics.jsonl`` and the same scalars to TensorBoard."""

    def __init__(self, directory: pathlib.Path, resume_step: int = 0, tensorboard: bool = True):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._truncate_after(resume_step)
        self.writer = None
        if tensorboard:
            from clu import metric_writers  # imports TensorFlow: only when we write event files

            self.writer = metric_writers.create_default_writer(str(self.directory / "tensorboard"),
                                                               just_logging=False)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the restored checkpoint, so the log equals an uninterrupted run's."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            self.writer.write_scalars(step, {k: v for k, v in row.items() if k != "step"})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class Throughput:
    def __init__(self):
        self.t0, self.tokens, self.steps = time.perf_counter(), 0, 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens
        self.steps += 1

    def rates(self) -> tuple[float, float]:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        r = (self.tokens / dt, self.steps / dt)
        self.t0, self.tokens, self.steps = time.perf_counter(), 0, 0
        return r
