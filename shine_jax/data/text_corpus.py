"""SHINE pretraining on a text corpus (``--config.data.pretrain_files=GLOB``): shards streamed, tokenised lazily and
packed as the official "group" pretraining packs them, with an iterator that resumes exactly.

* **Shards**: ``.parquet`` (a ``text`` column, read in record batches of that column only), ``.jsonl`` (a ``text``
  field per line) or ``.txt`` (one document per non-empty line). Nothing is read up front: the first text is read
  when the first batch is asked for.
* **Hosts**: host i of n reads the shards i, i + n, ... (sorted paths), so hosts never share a text; a corpus
  needs at least as many shards as hosts.
* **Packing**: consecutive texts are joined by the end-of-text token while they fit the evidence length (the
  official group pretraining); a text longer than that alone is one evidence, truncated as any evidence is. Each
  packed evidence becomes a RECON or a COMP example (``pipelines.pretrain_example``), with randomness drawn from
  (seed, host, example number), so an example never depends on where a run was resumed.
* **State**: (epoch, shard, texts consumed in that shard, examples emitted), saved with every checkpoint
  (Grain's iterator checkpointing); restoring re-opens the shard and skips the consumed texts. After the last
  shard the stream starts again with the next epoch.
* **Bad input**: a glob that matches nothing, a shard of another type, a parquet shard without a ``text`` column
  and fewer shards than hosts are one-line errors; a JSON Lines line that is not JSON or has no string ``text``,
  and a ``.txt`` line that is not UTF-8, are skipped with a warning naming the line.
"""

from __future__ import annotations

import glob
import pathlib
import warnings
from collections.abc import Iterator

import grain
import numpy as np

from shine_jax.data import sources
from shine_jax.data.prompts import encode_text
from shine_jax.errors import InputError

TEXT_SUFFIXES = (".parquet", ".jsonl", ".txt")


def corpus_files(pattern: str) -> list[pathlib.Path]:
    """The shards a ``data.pretrain_files`` glob names, sorted (every host must see the same list)."""
    paths = sorted(pathlib.Path(p) for p in glob.glob(pattern, recursive=True) if pathlib.Path(p).is_file())
    if not paths:
        raise InputError(f"data.pretrain_files: {pattern!r} matches no file")
    other = [p for p in paths if p.suffix.lower() not in TEXT_SUFFIXES]
    if other:
        raise InputError(f"data.pretrain_files: {other[0]} is not a text shard; use {', '.join(TEXT_SUFFIXES)} files")
    return paths


def iter_texts(path: pathlib.Path) -> Iterator[str]:
    """The documents of one shard, in order (empty ones left out)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet_texts(path)
    elif suffix == ".jsonl":
        for where, row in sources.iter_jsonl(path):
            text = row.get("text") if isinstance(row, dict) else None
            if isinstance(row, sources.BadLine) or not isinstance(text, str):
                problem = row.problem if isinstance(row, sources.BadLine) else "no string field 'text'"
                warnings.warn(f"{where}: {problem}; skipped", stacklevel=2)
            elif text.strip():
                yield text
    else:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    warnings.warn(f"{path}, line {lineno}: not UTF-8 (invalid byte at column {e.start + 1}); skipped",
                                  stacklevel=2)
                    continue
                if text:
                    yield text


def _parquet_texts(path: pathlib.Path) -> Iterator[str]:
    import pyarrow.parquet as pq  # heavy; only parquet shards need it

    shard = pq.ParquetFile(path)
    if "text" not in shard.schema_arrow.names:
        raise InputError(f"{path}: a parquet corpus shard needs a 'text' column; it has "
                         f"{', '.join(shard.schema_arrow.names)}")
    for batch in shard.iter_batches(batch_size=sources.PARQUET_BATCH_ROWS, columns=["text"]):
        yield from (t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip())


class PackedTextDataset(grain.IterDataset):
    """Packed RECON/COMP pretraining examples from this host's shards, endlessly (see the module docstring)."""

    def __init__(self, pattern: str, tok, data_cfg, seed: int, shard_index: int = 0, shard_count: int = 1,
                 make_example=None):
        super().__init__()
        files = corpus_files(pattern)
        if len(files) < shard_count:
            raise InputError(f"data.pretrain_files: {len(files)} shard(s) for {shard_count} hosts; each host reads "
                             f"whole shards, so split the corpus into at least {shard_count} files")
        self.files = files[shard_index::shard_count]
        self.tok, self.data_cfg, self.seed, self.shard_index = tok, data_cfg, seed, shard_index
        self.make_example = make_example  # (texts, rng) -> example; None: the texts themselves (tests)

    def __iter__(self) -> PackedTextIterator:
        return PackedTextIterator(self)


class PackedTextIterator(grain.DatasetIterator):
    def __init__(self, ds: PackedTextDataset):
        super().__init__()
        self.ds = ds
        self.state = {"epoch": 0, "file": 0, "consumed": 0, "emitted": 0}
        self.reader: Iterator[str] | None = None
        self.peeked: tuple[str, int] | None = None  # a text read but not yet in a group, with its token count

    def _open(self) -> None:
        self.reader = iter_texts(self.ds.files[self.state["file"]])
        for _ in range(self.state["consumed"]):
            next(self.reader, None)

    def _peek(self) -> tuple[str, int]:
        empty_shards = 0
        while self.peeked is None:
            if self.reader is None:
                self._open()
            text = next(self.reader, None)
            if text is None:  # end of this shard: the next one (a new epoch after the last)
                empty_shards = 0 if self.state["consumed"] else empty_shards + 1
                if empty_shards > len(self.ds.files):
                    raise InputError(f"data.pretrain_files: no text in {', '.join(map(str, self.ds.files))}")
                last = self.state["file"] + 1 == len(self.ds.files)
                self.state.update(file=0 if last else self.state["file"] + 1, consumed=0,
                                  epoch=self.state["epoch"] + last)
                self.reader = None
                continue
            self.peeked = (text, len(encode_text(self.ds.tok, text)))
        return self.peeked

    def next_group(self) -> list[str]:
        """The next packed group of texts: consecutive texts with their separators within the evidence length."""
        budget, group, used = self.ds.data_cfg.context_length, [], 0
        while True:
            text, n = self._peek()
            if group and used + n + 1 > budget:
                return group
            group.append(text)
            used += n + 1
            self.peeked = None
            self.state["consumed"] += 1
            if used >= budget:
                return group

    def __next__(self):
        group = self.next_group()
        number = self.state["emitted"]
        self.state["emitted"] += 1
        if self.ds.make_example is None:
            return group
        rng = np.random.default_rng([self.ds.seed, self.ds.shard_index, number])
        return self.ds.make_example(group, rng)

    def get_state(self) -> dict:
        # the peeked text is not consumed: a restored iterator reads it again from its shard
        return dict(self.state)

    def set_state(self, state: dict) -> None:
        self.state = {k: int(state[k]) for k in ("epoch", "file", "consumed", "emitted")}
        self.reader, self.peeked = None, None
