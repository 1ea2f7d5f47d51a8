"""The memory methods compared on the same base model and the same questions.

Every method turns a batch of documents into a *memory* once (``prepare``; its time is the amortised per-document
cost of SHINE's Table 1), then answers questions with it (``prompt`` decides what goes before the question,
``lora`` what adapter each row uses):

* ``none``  — the question alone;
* ``icl``   — the document in the prompt (in context);
* ``sft``   — test-time training: a rank-8 LoRA trained on the document's text with next-token loss for
  ``sft_epochs`` epochs (one epoch = one pass over the document), all documents of a batch trained at once as a
  per-example LoRA (rows never interact: per-row losses are summed and Adam is element-wise);
* ``shine`` — one generated LoRA per document, reused for all of its questions;
* ``rag``   — retrieval-augmented generation: every question is preceded by the ``retrieval.k`` chunks of the bank most
  similar to it (``retrieval.ChunkIndex``; the base model is the embedder). Without a bank it searches only its own
  document's chunks; with one, the whole bank;
* ``memory3`` — explicit memory (Memory3, ``eval.memory3``): every reference (128-token window) of the bank is
  encoded once by the base into sparse attention keys/values written to disk; the first half of the layers
  attend to the 5 references retrieved for each 64-token chunk of the conversation (own document, or the whole
  bank in the bank setting). The base is ``memory3.base`` when set (``memory3_train``'s, trained to read
  memories), else the SHINE run's frozen base;
* ``shine-wrong-doc`` — the control: ``shine``'s generation and prompt, but each document is answered with the
  LoRA generated from *another* document of the evaluated list (``memory_sources``: document i gets document
  (i + 1) mod n's). On a trained model it falls to the ``none`` level, which shows the adapter carries its own
  document rather than a document-independent answering skill.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from shine_jax.data import pipelines
from shine_jax.data.corpus import find_full_names
from shine_jax.data.prompts import icl_user_text
from shine_jax.errors import InputError
from shine_jax.eval import memory3
from shine_jax.eval.memory3 import Memory3Settings
from shine_jax.eval.retrieval import ChunkIndex, RetrievalSettings
from shine_jax.model.config import LORA_MODULES
from shine_jax.model.lora import init_lora, lora_nbytes
from shine_jax.model.losses import causal_lm_loss

METHODS = ("none", "icl", "sft", "shine", "shine-wrong-doc", "rag", "memory3")
MIN_DOCUMENTS = {"shine-wrong-doc": 2}  # the control needs another document to take the LoRA from
RETRIEVING = ("rag", "memory3")  # the methods that search the bank (the harness loads their embedder)


@dataclasses.dataclass
class EvalSettings:
    batch_size: int = 32  # documents per batch
    max_new_tokens: int = 24
    sft_epochs: int = 20
    sft_lr: float = 1e-3
    sft_rank: int = 8
    max_doc_tokens: int = 0  # 0: the SHINE run's evidence length
    seed: int = 0
    retrieval: RetrievalSettings = dataclasses.field(default_factory=RetrievalSettings)  # rag and the bank
    memory3: Memory3Settings = dataclasses.field(default_factory=Memory3Settings)


class Method:
    name = "base"

    def memory_sources(self, contexts: Sequence[str]) -> list[str]:
        """The text each document's memory is built from, for the whole evaluated list: its own document."""
        return list(contexts)

    def prepare(self, shine, docs: Sequence[str]) -> Any:
        return None

    def first_user_text(self, context: str, question: str) -> str:
        return question

    def user_texts(self, records: Sequence[int], contexts: Sequence[str], questions: Sequence[str],
                   turn: int) -> list[str]:
        """The user messages of one turn for the given records (indices into the evaluated list): by default the
        first turn carries what ``first_user_text`` adds, later turns the question alone."""
        if turn:
            return list(questions)
        return [self.first_user_text(c, q) for c, q in zip(contexts, questions)]

    def lora_for_rows(self, memory, rows: np.ndarray):
        return None

    def generate(self, base, memory, records: Sequence[int], ids: np.ndarray, mask: np.ndarray,
                 max_new_tokens: int, lora) -> np.ndarray:
        """The new ids ``[B, max_new_tokens]`` of a chat batch whose first rows are ``records`` (indices into the
        evaluated list; the other rows are padding)."""
        return base.generate(ids, mask, max_new_tokens, lora=lora)

    def extra_results(self) -> dict:
        return {}

    def storage_bytes(self, shine, contexts: Sequence[str]) -> float:
        """Bytes this method keeps per document to answer about it later (none: nothing)."""
        return 0.0

    def attach(self, index: ChunkIndex | None, embedder, record_docs: np.ndarray, whole_bank: bool,
               bank_docs: Sequence[str]) -> None:
        """The bank's chunk index (None when no method needs rag's chunks), its embedder and documents, for methods
        that retrieve (record i's own document is ``bank_docs[record_docs[i]]``)."""


class NoMemory(Method):
    name = "none"


class InContext(Method):
    name = "icl"

    def storage_bytes(self, shine, contexts):  # the document's text, put into the prompt
        return float(np.mean([len(c.encode("utf-8")) for c in contexts]))

    def first_user_text(self, context: str, question: str) -> str:
        return icl_user_text(context, question)


class GeneratedLoRA(Method):
    name = "shine"

    def __init__(self, max_doc_tokens: int):
        self.max_doc_tokens = max_doc_tokens

    def prepare(self, shine, docs):
        # the encoding of training; the harness (check_records) has applied Shine.encode_evidence's document policy
        ids, mask = pipelines.encode_evidence(shine.base.tokenizer, docs, self.max_doc_tokens)
        lora = shine.generate_lora(ids, mask)
        return jax.block_until_ready(lora)

    def lora_for_rows(self, memory, rows):
        return select_rows(memory, rows)

    def storage_bytes(self, shine, contexts):  # a generated adapter, float32 (made on demand, or kept)
        return float(lora_nbytes(shine.base.cfg, shine.cfg.lora_rank))


class WrongDocLoRA(GeneratedLoRA):
    """Same generation and prompt as ``shine``; only the source of each LoRA differs (a derangement)."""

    name = "shine-wrong-doc"

    def memory_sources(self, contexts):
        """Document i answers with the LoRA of the next document (cyclically) that names none of its people: with
        distractor bios, document i + 1 may hold document i's person, and its LoRA would then carry the answers."""
        check_document_count([self.name], len(contexts))
        names = [set(find_full_names(c)) for c in contexts]
        n = len(contexts)
        return [contexts[next((j for j in ((i + k) % n for k in range(1, n)) if not names[i] & names[j]),
                              (i + 1) % n)] for i in range(n)]


class RetrievalAugmented(Method):
    """Each question, at every turn, preceded by its top-k chunks: from the bank (``index`` over every bank
    document) or, without a bank, from its own document only (``own_doc[record]`` = its bank document)."""

    name = "rag"

    def __init__(self, k: int):
        self.k = k
        self.index: ChunkIndex | None = None
        self.record_docs: np.ndarray | None = None  # record i's own bank document
        self.own_doc: np.ndarray | None = None  # what each record may search: record_docs, or None (the whole bank)
        self.hits_own: list[bool] = []  # per question: does the best chunk come from the question's document?

    def attach(self, index, embedder, record_docs, whole_bank, bank_docs):
        self.index, self.record_docs = index, record_docs
        self.own_doc = None if whole_bank else record_docs

    def user_texts(self, records, contexts, questions, turn):
        only = None if self.own_doc is None else self.own_doc[np.asarray(records)]
        hits = self.index.search(list(questions), self.k, only)
        self.hits_own += [bool(h) and self.index.docs[h[0]] == self.record_docs[r] for h, r in zip(hits, records)]
        return [icl_user_text("\n".join(self.index.texts[c] for c in h), q) for h, q in zip(hits, questions)]

    def extra_results(self):
        return {"top1_chunk_from_own_doc": float(np.mean(self.hits_own)) if self.hits_own else 0.0}

    def storage_bytes(self, shine, contexts):  # the chunk index: vectors and chunk texts
        return self.index.bytes_per_document() if self.index is not None else 0.0


class ExplicitMemory(Method):
    """Memory3 (``eval.memory3``): the whole bank is written once, at the first ``prepare``; each chunk of a
    conversation reads the references retrieved for it, from its own document or, in the bank setting, from all."""

    name = "memory3"

    def __init__(self, settings: Memory3Settings, retrieval: RetrievalSettings):
        settings.check()
        self.s, self.retrieval = settings, retrieval
        self.embedder = None  # rag's embedder: it embeds the references and the prompt's chunks
        self.record_docs: np.ndarray | None = None
        self.own_doc: np.ndarray | None = None  # what each record may search: record_docs, or None (the bank)
        self.bank_docs: list[str] = []
        self.bank: memory3.MemoryBank | None = None
        self.write_s = 0.0
        self.hits_own: list[bool] = []  # per retrieval: is the best reference from the record's own document?
        self.tmp: tempfile.TemporaryDirectory | None = None  # the bank's folder when no directory is set
        self.base = None  # the base that writes and reads the memories

    def reading_base(self, shine):
        """``memory3.base`` (loaded once, on the SHINE base's mesh), else the SHINE run's base. The harness
        tokenises the prompts with the SHINE base's tokenizer, so the two must share it."""
        if self.base is None:
            if not self.s.base:
                self.base = shine.base
                return self.base
            base = memory3.load_reading_base(self.s.base)
            mismatch = memory3.training_mismatch(self.s.base, self.s)
            if mismatch:  # legal (a study of the settings), but rarely meant
                warnings.warn(f"memory3: reading with other settings than {self.s.base} was trained with: {mismatch}",
                              stacklevel=2)
            if not memory3.same_tokenizer(base.tokenizer, shine.base.tokenizer):
                raise InputError(f"memory3: the base in {self.s.base} has another tokenizer than the evaluated "
                                 f"SHINE run's base")
            self.base = base if shine.base.mesh is None else base.shard(shine.base.mesh)
        return self.base

    def attach(self, index, embedder, record_docs, whole_bank, bank_docs):
        self.embedder, self.record_docs, self.bank_docs = embedder, record_docs, list(bank_docs)
        self.own_doc = None if whole_bank else record_docs

    def folder(self) -> pathlib.Path:
        if self.s.directory:
            return pathlib.Path(self.s.directory)
        self.tmp = tempfile.TemporaryDirectory(prefix="memory3-")
        return pathlib.Path(self.tmp.name) / "bank"

    def prepare(self, shine, docs):
        if self.bank is None:  # every record may read any bank document's references
            base = self.reading_base(shine)  # loading it is no cost of writing memories
            t = time.perf_counter()
            self.bank = memory3.build_bank(base, self.bank_docs, self.embedder, self.s, self.retrieval,
                                           self.folder())
            self.write_s = time.perf_counter() - t
        return self.bank

    def generate(self, base, memory, records, ids, mask, max_new_tokens, lora):
        def retrieve(rows, texts):
            recs = np.asarray(records)[rows]
            hits = memory.search(texts, self.s.memories, None if self.own_doc is None else self.own_doc[recs])
            self.hits_own += [bool(h) and memory.index.docs[h[0]] == self.record_docs[r] for h, r in zip(hits, recs)]
            return hits

        return memory3.generate(base if self.base is None else self.base, memory, ids, mask, len(records), max_new_tokens, retrieve,
                                self.s, () if lora is None else (lora,))

    def storage_bytes(self, shine, contexts):  # the sparse keys and values of the document's references
        return self.bank.array_bytes / self.bank.documents if self.bank is not None else 0.0

    def extra_results(self):
        bank = self.bank
        if bank is None:
            return {}
        files = sum((bank.path / memory3.doc_file(d)).stat().st_size for d in range(bank.documents))
        return {"memory3": {
            "bytes_per_doc": bank.array_bytes / bank.documents, "file_bytes_per_doc": files / bank.documents,
            "documents": bank.documents, "references": len(bank.index), "tokens_kept_per_reference": self.s.top_k,
            "memory_layers": bank.keys.shape[1], "write_s_per_document": self.write_s / bank.documents,
            "top1_reference_from_own_doc": float(np.mean(self.hits_own)) if self.hits_own else 0.0,
            "directory": str(bank.path) if self.s.directory else None,
            "base": self.s.base or "the SHINE run's base (frozen)"}}


class TestTimeTraining(Method):
    name = "sft"

    def __init__(self, settings: EvalSettings, max_doc_tokens: int):
        self.s, self.max_doc_tokens = settings, max_doc_tokens

    def storage_bytes(self, shine, contexts):  # the trained adapter, float32
        return float(lora_nbytes(shine.base.cfg, self.s.sft_rank))

    def prepare(self, shine, docs):
        base = shine.base
        ids, mask = base.encode(docs, self.max_doc_tokens)
        lora = init_sft_lora(base.cfg, self.s.sft_rank, len(docs), jax.random.key(self.s.seed))
        tx = optax.adam(self.s.sft_lr)
        out = _train_sft(base.graphdef, base.state, lora, tx.init(lora), jnp.asarray(ids), jnp.asarray(mask),
                         self.s.sft_epochs, self.s.sft_lr)
        return jax.block_until_ready(out)

    def lora_for_rows(self, memory, rows):
        return select_rows(memory, rows)


def make_methods(names: Sequence[str], settings: EvalSettings, max_doc_tokens: int) -> list[Method]:
    table = {"none": lambda: NoMemory(), "icl": lambda: InContext(),
             "sft": lambda: TestTimeTraining(settings, max_doc_tokens),
             "shine": lambda: GeneratedLoRA(max_doc_tokens), "shine-wrong-doc": lambda: WrongDocLoRA(max_doc_tokens),
             "rag": lambda: RetrievalAugmented(settings.retrieval.k),
             "memory3": lambda: ExplicitMemory(settings.memory3, settings.retrieval)}
    check_method_names(names)
    return [table[n]() for n in names]


def check_method_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")


def check_document_count(names: Sequence[str], num_docs: int) -> None:
    """Methods that need several documents fail here, in one line, before any model runs."""
    for name in names:
        need = MIN_DOCUMENTS.get(name, 1)
        if num_docs < need:
            raise InputError(f"method {name} needs at least {need} documents (it answers each with another "
                             f"document's LoRA), got {num_docs}")


def select_rows(lora, rows: np.ndarray):
    """The per-example LoRA of the given document rows (LoRA batch axis 1)."""
    idx = jnp.asarray(rows)
    return jax.tree.map(lambda x: jnp.take(x, idx, axis=1), lora)


def init_sft_lora(cfg, rank: int, batch: int, key) -> dict:
    """PEFT's init (A ~ U(+-1/sqrt(in)), B = 0), one adapter per document."""
    keys = iter(jax.random.split(key, len(LORA_MODULES)))
    return init_lora(cfg, rank, lambda: next(keys), init="peft", batch=batch)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _train_sft(graphdef, state, lora, opt_state, ids, mask, epochs, lr):
    from flax import nnx

    decoder = nnx.merge(graphdef, state)
    tx = optax.adam(lr)
    labels = jnp.where(mask.astype(bool), ids, -100)

    def row_losses(lora):
        logits = decoder(ids, mask, loras=(lora,))
        per_row = jax.vmap(lambda lg, lb: causal_lm_loss(lg[None], lb[None])[0])(logits, labels)
        return per_row.sum()  # rows are independent: each adapter only sees its own loss

    def step(carry, _):
        lora, opt_state = carry
        grads = jax.grad(row_losses)(lora)
        updates, opt_state = tx.update(grads, opt_state, lora)
        return (optax.apply_updates(lora, updates), opt_state), None

    (lora, _), _ = jax.lax.scan(step, (lora, opt_state), None, length=epochs)
    return lora
