"""The data of ``memory3_train``: rows that read Memory3 memories (``eval.memory3``) while the base learns.

Two kinds of rows, each a text with up to ``memories`` references whose memories every token of the row reads
(``memory3.read_loss``):

* **QA** (a share ``1 - lm_share``): the question/answer turns of a document about freshly generated people
  (``corpus.fresh_document``: no other text names them, so an answer can only be read), in the chat template, the
  loss on the answers; the document is not in the prompt, only the memories of its references. Its memories are
  its own references (the first ``memories``): what evaluation's own-document retrieval returns for a document of
  at most ``memories`` references, every bundled test document among them, so no retrieval is run.
* **Continual LM** (``lm_share``): one reference of a bundled training document as plain text, the loss on every
  token, reading the ``memories`` references most similar to it by the evaluation's sentence embedder, *never
  itself* (Memory3 trains on a text with retrieved memories that exclude the text's own reference, or it would
  learn to copy it). Its neighbours are the other references of ``lm_docs`` training documents, computed once per
  data build and kept in ``<data dir>/memory3``. The documents are chosen by person (``lm_documents``): a person
  of the training split has bios in several documents, and a pool that keeps them together, as the whole corpus
  would, gives a text neighbours that state the same facts in other words, memories worth reading.

References are cut as the bank cuts them (``retrieval.chunk_text`` windows of ``reference_tokens`` tokens, no
overlap) and laid out by ``memory3.reference_rows_of_ids``. Validation rows are QA rows of the validation split's
documents (people no training text names), with their own references.

Departure from the paper: in a row every token reads the same memories; evaluation retrieves anew every 64 tokens,
which for a QA row gives the same memories again, and for an LM row (one reference, at most 128 tokens) would
query with each half instead of the whole.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import random
from collections.abc import Callable, Sequence

import grain
import numpy as np

from shine_jax.data import corpus
from shine_jax.data.pipelines import left_pad, qa_turns
from shine_jax.data.prompts import chat_turns, encode_text
from shine_jax.eval.memory3 import Memory3Settings, reference_rows_of_ids
from shine_jax.eval.retrieval import chunk_text

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> [n, H]
SEARCH_BLOCK = 1024  # references scored at once when neighbours are searched ([block, R] scores)


def reference_texts(tok, text: str, s: Memory3Settings) -> list[str]:
    """A document's references as ``memory3.build_bank`` cuts them (the texts its embedder reads)."""
    return chunk_text(tok, text, s.reference_tokens, 0)


def reference_ids(tok, texts: Sequence[str], s: Memory3Settings) -> list[list[int]]:
    """References' token ids as ``memory3.encode_references`` reads them: at most ``reference_tokens`` each."""
    return [encode_text(tok, t)[: s.reference_tokens] for t in texts]


def nearest_others(vectors: np.ndarray, k: int) -> np.ndarray:
    """``[R, k]``: for each row of ``vectors`` (unit norm), the ``k`` most cosine-similar *other* rows, best
    first (-1 where fewer than ``k`` others exist). A row never lists itself, even beside an identical twin."""
    r = len(vectors)
    out = np.full((r, k), -1, np.int64)
    take = min(k, r - 1)
    for start in range(0, r, SEARCH_BLOCK):
        scores = vectors[start:start + SEARCH_BLOCK] @ vectors.T
        rows = np.arange(len(scores))
        scores[rows, start + rows] = -np.inf  # its own reference is never a memory of it
        if take > 0:
            out[start:start + len(scores), :take] = np.argsort(-scores, axis=1, kind="stable")[:, :take]
    return out


def lm_documents(records: Sequence[dict], n: int) -> list[str]:
    """``n`` documents of ``records`` that keep each person's bios together: in record order, every record about
    a person of the current record joins (the embedder's pool is a few thousand references on a CPU, not the
    corpus, whose first ``n`` documents would name most people once)."""
    about: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        for name in corpus.find_full_names(r["context"]):
            about.setdefault(name, []).append(i)
    chosen: dict[int, None] = {}
    for i, r in enumerate(records):
        if len(chosen) >= n:
            break
        chosen.setdefault(i)
        for name in corpus.find_full_names(r["context"]):
            chosen.update(dict.fromkeys(about[name]))
    return [records[i]["context"] for i in list(chosen)[:n]]


class LmPool:
    """The continual-LM texts: every reference of ``documents`` (token ids) and the ``memories`` other references
    each reads (``neighbours`` ``[R, memories]``, -1: none)."""

    def __init__(self, refs: list[list[int]], neighbours: np.ndarray):
        self.refs, self.neighbours = refs, neighbours

    @classmethod
    def build(cls, tok, documents: Sequence[str], s: Memory3Settings, embedder: Embedder,
              cache_dir: pathlib.Path | None = None) -> LmPool:
        texts = [t for doc in documents for t in reference_texts(tok, doc, s)]
        refs = reference_ids(tok, texts, s)
        path = None
        if cache_dir is not None:  # the neighbours are a function of the texts and the number kept
            key = hashlib.sha256("\x00".join([str(s.memories), *texts]).encode()).hexdigest()[:16]
            path = cache_dir / f"neighbours-{key}.npy"
            if path.is_file():
                return cls(refs, np.load(path, allow_pickle=False))
        vectors = embedder(texts) if texts else np.zeros((0, 1), np.float32)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        neighbours = nearest_others(vectors.astype(np.float32), s.memories)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, neighbours, allow_pickle=False)
            tmp.replace(path)
        return cls(refs, neighbours)

    def __len__(self) -> int:
        return len(self.refs)


# ------------------------------------------------------------------------------------------------- rows
def row(tok, ids: Sequence[int], labels: Sequence[int], refs: Sequence[Sequence[int]], s: Memory3Settings,
        length: int) -> dict[str, np.ndarray]:
    """A text left-padded to ``length`` (its first ``length`` tokens) and the rows of its first ``memories``
    references (empty rows after them)."""
    text = left_pad(ids, length, tok.pad_token_id, labels)
    ref_ids, ref_mask, ref_valid = reference_rows_of_ids(tok, list(refs)[: s.memories], s, s.memories)
    return {"input_ids": text["ids"], "attention_mask": text["mask"], "labels": text["labels"],
            "ref_ids": ref_ids, "ref_mask": ref_mask, "ref_valid": ref_valid}


def qa_row(tok, record: dict, s: Memory3Settings, length: int) -> dict[str, np.ndarray]:
    """The record's question/answer turns (answers labelled), reading its own references."""
    ids, labels = chat_turns(tok, qa_turns(record))
    return row(tok, ids, labels, reference_ids(tok, reference_texts(tok, record["context"], s), s), s, length)


def lm_row(tok, pool: LmPool, i: int, s: Memory3Settings, length: int) -> dict[str, np.ndarray]:
    """Reference ``i`` as plain text (every token labelled), reading its neighbours, never itself."""
    ids = pool.refs[i]
    return row(tok, ids, ids, [pool.refs[j] for j in pool.neighbours[i] if j >= 0], s, length)


# ------------------------------------------------------------------------------------------------- datasets
def train_dataset(tok, pool: LmPool, s: Memory3Settings, length: int, lm_share: float, fresh_max_people: int,
                  seed: int, shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
    """An endless, shuffled stream of QA and LM rows; each row's kind and fresh document are drawn from (seed,
    index) by ``random_map``, so a resumed run sees the same rows."""
    indices = list(range(max(len(pool), 1)))  # an index names the LM text; a QA row ignores it
    ds = grain.MapDataset.source(indices)[shard_index::shard_count].shuffle(seed=seed).repeat(None)
    return ds.random_map(functools.partial(_train_map, tok=tok, pool=pool, s=s, length=length, lm_share=lm_share,
                                           fresh_max_people=fresh_max_people), seed=seed + 1)


def _train_map(i, rng, *, tok, pool, s, length, lm_share, fresh_max_people):
    if len(pool) and rng.random() < lm_share:
        return lm_row(tok, pool, i, s, length)
    record = corpus.fresh_document(random.Random(int(rng.integers(2**63))), max_people=fresh_max_people)
    return qa_row(tok, record, s, length)


def eval_dataset(tok, records: Sequence[dict], s: Memory3Settings, length: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1) -> grain.MapDataset:
    """QA rows of ``records`` (own references), shuffled once, one pass."""
    ds = grain.MapDataset.source(list(records))[shard_index::shard_count].shuffle(seed=seed)
    return ds.map(functools.partial(qa_row, tok, s=s, length=length))
