"""Rows of downloaded data files, streamed: ``.jsonl`` line by line, ``.parquet`` in record batches and ``.json``
(a top-level list, or an object holding lists such as SQuAD's original ``{"data": [...]}``) item by item, so a
multi-GB file is never held in memory whole.

Each row comes with ``where``, the place a warning about it names: ``FILE, line N`` (JSON Lines), ``FILE, row N``
(parquet), ``FILE, item N (line L)`` (JSON). A JSON Lines line that is not JSON is yielded as a :class:`BadLine`
(the importer warns and goes on); a ``.json`` file that is not valid JSON is an ``InputError``, since nothing after
the fault can be found again.
"""

from __future__ import annotations

import glob
import json
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from shine_jax.errors import InputError

SUFFIXES = (".json", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024  # rows converted to Python objects at a time
JSON_CHUNK_CHARS = 1 << 20  # characters read at a time from a .json file (grows for an item that is larger)
JSON_MAX_ITEM_CHARS = 1 << 28  # an item that does not decode within this many characters is called invalid
JSON_SPACE = " \t\n\r"


@dataclass(frozen=True)
class BadLine:
    """A JSON Lines line that could not be decoded, in place of its row."""

    problem: str


def expand_inputs(patterns: Sequence[str]) -> list[pathlib.Path]:
    """The files that ``--input`` paths and globs name, in order, each once; one that matches nothing, is missing
    or has a suffix other than .json/.jsonl/.parquet is an ``InputError``."""
    paths: list[pathlib.Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(pathlib.Path(p) for p in glob.glob(pattern, recursive=True))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise InputError(f"--input {pattern} matches no file")
        else:
            matches = [pathlib.Path(pattern)]
            if not matches[0].is_file():
                raise InputError(f"--input {pattern}: no such file")
        paths += [p for p in matches if p not in paths]
    for path in paths:
        if path.suffix.lower() not in SUFFIXES:
            raise InputError(f"{path}: unknown input type {path.suffix or '(no suffix)'!r}; the importer reads "
                             f"{', '.join(SUFFIXES)} files")
    return paths


def row_count(path: pathlib.Path) -> int | None:
    """Rows in ``path`` where the file says so without being read (parquet metadata), else None."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq  # heavy; only parquet inputs need it

    return pq.ParquetFile(path).metadata.num_rows


def iter_rows(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` for every row of ``path``, streamed; the suffix says how to read it."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return iter_jsonl(path)
    if suffix == ".parquet":
        return iter_parquet(path)
    if suffix == ".json":
        return iter_json(path)
    raise InputError(f"{path}: unknown input type {suffix!r}; the importer reads {', '.join(SUFFIXES)} files")


def iter_jsonl(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    # binary lines split on b"\n" only: JSON strings may hold U+2028, which text-mode splitting would break at
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, BadLine(f"not UTF-8 (invalid byte at column {e.start + 1})")
            except json.JSONDecodeError as e:
                yield where, BadLine(f"invalid JSON ({e.msg} at column {e.colno})")


def iter_parquet(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # heavy; only parquet inputs need it

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            n += 1
            yield f"{path}, row {n}", row


def iter_json(path: pathlib.Path) -> Iterator[tuple[str, Any]]:
    """Items of a top-level JSON list, or of every list-valued member of a top-level object (other members are
    read past), decoded one at a time."""
    with open(path, encoding="utf-8-sig") as f:
        reader = JsonItems(f, path)
        first = reader.peek()
        if first == "[":
            yield from reader.array(f"{path}, item")
        elif first == "{":
            yield from reader.object_lists(path)
        else:
            raise InputError(f"{path}: a .json input must hold a list of records or an object holding one, found "
                             f"{'nothing' if not first else repr(first)} at its start (JSON Lines files end in .jsonl)")


class JsonItems:
    """An incremental reader of one JSON document: ``json.JSONDecoder.raw_decode`` over a buffer that is refilled
    from the file as items are consumed (no streaming JSON parser is installed), tracking the line number."""

    def __init__(self, f: TextIO, path: pathlib.Path):
        self.f, self.path = f, path
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def fill(self, at_least: int = 0) -> bool:
        """Read ``at_least`` (at least a chunk) more of the file, dropping what was consumed; False at the end."""
        if self.eof:
            return False
        try:
            more = self.f.read(max(at_least, JSON_CHUNK_CHARS))
        except UnicodeDecodeError as e:
            raise InputError(f"{self.path} is not UTF-8 text near line {self.line} ({e.reason})") from None
        self.buf, self.pos = self.buf[self.pos:] + more, 0
        self.eof = not more
        return bool(more)

    def advance(self, to: int) -> None:
        self.line += self.buf.count("\n", self.pos, to)
        self.pos = to

    def peek(self) -> str:
        """The next character that is not JSON white space ('' at the end), without consuming it."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in JSON_SPACE:
                self.advance(self.pos + 1)
            if self.pos < len(self.buf) or not self.fill():
                return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def expect(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            found = repr(char) if char else "the end of the file"
            raise InputError(f"{self.path}: invalid JSON at line {self.line}: expected "
                             f"{' or '.join(repr(c) for c in chars)}, found {found}")
        self.advance(self.pos + 1)
        return char

    def value(self) -> Any:
        """Decode the next value; a value cut by the buffer's end is retried with more of the file."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # perhaps only cut short by the buffer: read as much again and retry, up to a bound so that a
                # corrupt multi-GB file is not read into memory whole
                if len(self.buf) - self.pos < JSON_MAX_ITEM_CHARS and self.fill(len(self.buf) - self.pos):
                    continue
                raise InputError(f"{self.path}: invalid JSON at line {self.line} ({e.msg})") from None
            if end == len(self.buf) and self.fill(len(self.buf) - self.pos):  # a number may go on past the buffer
                continue
            self.advance(end)
            return value

    def array(self, label: str) -> Iterator[tuple[str, Any]]:
        """The items of the array that starts here, as ``(f"{label} N (line L)", item)``."""
        self.expect("[")
        if self.peek() == "]":
            self.advance(self.pos + 1)
            return
        n = 0
        while True:
            n += 1
            self.peek()
            line = self.line
            yield f"{label} {n} (line {line})", self.value()
            if self.expect(",]") == "]":
                return

    def object_lists(self, path: pathlib.Path) -> Iterator[tuple[str, Any]]:
        self.expect("{")
        found = False
        while self.peek() != "}":
            key = self.value()
            self.expect(":")
            if self.peek() == "[":
                found = True
                yield from self.array(f"{path}, {key!r} item")
            else:
                self.value()  # a member that is not a list of records (SQuAD's "version")
            if self.expect(",}") == "}":
                break
        if not found:
            raise InputError(f"{path}: the JSON object holds no list of records (a column-oriented file such as "
                             f"MS MARCO's original JSON is not read; use the Hugging Face parquet files)")
