"""Length buckets: a left-padded batch cut to the shortest bucket length that holds its longest row.

Every pipeline pads its rows on the left to the configured length (``data.context_length``,
``data.conversation_length``, ...), as the official collators pad every row to the maximum. A batch of short rows
then spends most of its step on padding. Cutting leading columns that are padding in every row changes no number
that matters: padded keys are masked, padded queries carry no label and produce no memory state, and positions
are counted from each row's first real token. Rounding the cut length up to one of a few bucket lengths keeps the
number of compiled step shapes small (at most ``buckets`` per padded field group).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping

import grain
import numpy as np

# Each group: the mask that says which columns are real, and the arrays padded alongside it (same length).
GROUPS: dict[str, tuple[str, ...]] = {
    "evidence_mask": ("evidence_ids", "evidence_mask"),
    "attention_mask": ("input_ids", "attention_mask", "labels"),
    "teacher_attention_mask": ("teacher_input_ids", "teacher_attention_mask"),
}
# The KL teacher's rows end with the student's conversation, read as its last columns: never cut shorter than it.
AT_LEAST = {"teacher_attention_mask": "attention_mask"}
MULTIPLE = 8  # bucket lengths are multiples of 8 (vector-friendly shapes on every backend)


def bucket_lengths(full: int, buckets: int) -> list[int]:
    """``buckets`` lengths up to ``full``, evenly spaced and rounded up to a multiple of 8 (the last is ``full``)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    lengths = {min(full, math.ceil(full * k / buckets / MULTIPLE) * MULTIPLE) for k in range(1, buckets + 1)}
    return sorted(lengths | {full})


def needed_length(mask: np.ndarray) -> int:
    """Columns from the first one that is real in any row to the end (left padding: the longest row's length)."""
    real = np.asarray(mask).reshape(-1, mask.shape[-1]).any(axis=0)
    return int(mask.shape[-1] - np.argmax(real)) if real.any() else 1


def trim_batch(batch: Mapping[str, np.ndarray], buckets: int,
               agree: Callable[[dict[str, int]], dict[str, int]] | None = None) -> dict[str, np.ndarray]:
    """``batch`` with each padded group cut on the left to the shortest bucket length that holds every row.

    ``agree`` maps this host's needed lengths to the ones every host uses (their maximum; multi-host runs must cut
    to one global shape). Arrays of no group pass through unchanged."""
    need = {m: needed_length(batch[m]) for m in GROUPS if m in batch}
    if agree is not None:
        need = agree(need)
    out, kept = dict(batch), {}
    for m, n in need.items():
        full = batch[m].shape[-1]
        n = max(n, kept.get(AT_LEAST.get(m), 0))
        keep = kept[m] = next(b for b in bucket_lengths(full, buckets) if b >= n)
        for k in GROUPS[m]:
            if k in out:
                if out[k].shape[-1] != full:
                    raise ValueError(f"{k} has length {out[k].shape[-1]}, but {m} has {full}: not padded together")
                out[k] = out[k][..., full - keep:]
    return out


def real_length(example: Mapping[str, np.ndarray]) -> int:
    """The real (unpadded) tokens of one example over all its padded groups: what length grouping sorts by."""
    return int(sum(np.asarray(example[m]).sum() for m in GROUPS if m in example))


class LengthGroupedBatches:
    """Batches of examples of similar length, as an indexable Grain dataset (exact resume from its index).

    The examples of each window of ``window`` batches are sorted by ``real_length`` and cut into ``window``
    batches, which come out in a seeded random order, so that with ``trim_batch`` a batch of short rows is cut
    short. Batch ``i`` is batch ``i % window`` of window ``i // window``; the last window is kept while its
    batches are read (Grain's prefetch threads ask for them concurrently: one lock, one computation)."""

    def __init__(self, examples: grain.MapDataset, batch_size: int, window: int, seed: int):
        self.examples, self.batch_size, self.window, self.seed = examples, batch_size, window, seed
        self._lock = threading.Lock()
        self._cached: tuple[int, list[list[dict]]] | None = None

    def dataset(self) -> grain.MapDataset:
        windows = len(self.examples) // (self.batch_size * self.window)
        return grain.MapDataset.range(windows * self.window).map(self.batch)

    def _window(self, w: int) -> list[list[dict]]:
        with self._lock:
            if self._cached is None or self._cached[0] != w:
                start = w * self.batch_size * self.window
                rows = [self.examples[start + k] for k in range(self.batch_size * self.window)]
                order = np.argsort([real_length(r) for r in rows], kind="stable")
                groups = [[rows[i] for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
                          for b in range(self.window)]
                shuffle = np.random.default_rng([self.seed, w]).permutation(self.window)
                self._cached = (w, [groups[i] for i in shuffle])
            return self._cached[1]

    def batch(self, index: int) -> dict[str, np.ndarray]:
        w, j = divmod(int(index), self.window)
        rows = self._window(w)[j]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
