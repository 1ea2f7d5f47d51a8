"""Evaluate memory methods on document-QA records: multi-turn conversations, batched generation, timing.

Each document's questions are asked in order as one conversation (the model's own earlier answers stay in the
history), turn by turn across a batch of documents. Per method we report F1 / EM (SQuAD-normalised, max over gold
answers), F1 per turn, the amortised per-document cost of building the memory (LoRA generation, test-time
training) and the generation time per question.

With a *bank* (the evaluated documents plus distractor documents), no method is handed its document: each
conversation is routed by its first question to the bank document whose chunk is most similar
(``retrieval.ChunkIndex.route``), and the method builds its memory from that document (``rag`` and ``memory3``
search the whole bank instead). The share of conversations routed to their own document is reported.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from shine_jax.data import prompts
from shine_jax.data.pipelines import left_pad
from shine_jax.errors import InputError, UserError
from shine_jax.eval.methods import (
    RETRIEVING,
    EvalSettings,
    Method,
    check_document_count,
    make_methods,
)
from shine_jax.eval.metrics import best_contains, best_em, best_f1
from shine_jax.eval.retrieval import ChunkIndex, make_embedder

PAD_MULTIPLE = 64  # prompt lengths are padded to a multiple of this so compiled shapes are reused


class BadRecord(UserError):
    pass


def check_records(shine, records: Sequence[dict], max_doc_tokens: int, on_long: str, skip_bad: bool) -> list[dict]:
    """The document policy (``Shine.encode_evidence``) applied to each record, plus: a record needs a question.
    A bad record is refused, or dropped with a warning under ``skip_bad``; a long one is truncated with a warning."""
    kept = []
    for n, rec in enumerate(records):
        ident = rec.get("id", f"record {n + 1}")
        name = f"document {ident}"
        try:
            if not rec["qa"]:
                raise InputError(f"{name} has no questions")
            shine.encode_evidence([rec["context"]], max_doc_tokens, on_long, names=[ident])  # the one policy
        except InputError as e:
            if not skip_bad:
                raise BadRecord(str(e)) from None
            warnings.warn(f"{e}; skipped", stacklevel=2)
            continue
        kept.append(rec)
    return kept


def chat_batch(tok, histories: list[list[dict]], rows_to: int):
    """Left-padded ids/mask for chat histories (each ending with a user turn); rows padded to ``rows_to``."""
    enc = [prompts.encode_text(tok, prompts.generation_text(tok, h)) for h in histories]
    length = -(-max(len(e) for e in enc) // PAD_MULTIPLE) * PAD_MULTIPLE
    rows = [left_pad(e, length, tok.pad_token_id) for e in enc] + [left_pad([], length, tok.pad_token_id)] * (
        rows_to - len(enc))
    ids = np.stack([r["ids"] for r in rows])
    mask = np.stack([r["mask"] for r in rows])
    mask[len(enc):, -1] = 1  # padding rows: one dummy token so they are well defined
    return ids, mask


def run_method(shine, method: Method, records: list[dict], settings: EvalSettings, progress=None,
               contexts: Sequence[str] | None = None) -> dict:
    """``method`` on ``records``; ``contexts[i]`` is the document record i's memory is built from (default: its
    own; in the bank setting, the one retrieval found)."""
    tok = shine.base.tokenizer
    contexts = [r["context"] for r in records] if contexts is None else list(contexts)
    f1s, ems, contains, per_turn = [], [], [], {}
    prep_s = gen_s = 0.0
    predictions = []
    # over the whole list, not per batch: the wrong-document control may take a LoRA from another batch
    sources = method.memory_sources(contexts)
    for start in range(0, len(records), settings.batch_size):
        docs = records[start:start + settings.batch_size]
        t = time.perf_counter()
        memory = method.prepare(shine, sources[start:start + settings.batch_size])
        prep_s += time.perf_counter() - t
        histories = [[] for _ in docs]
        answers = [[] for _ in docs]
        for turn in range(max(len(d["qa"]) for d in docs)):
            rows = np.array([i for i, d in enumerate(docs) if turn < len(d["qa"])])
            texts = method.user_texts([start + i for i in rows], [contexts[start + i] for i in rows],
                                      [docs[i]["qa"][turn]["question"] for i in rows], turn)
            for i, text in zip(rows, texts):
                histories[i].append({"role": "user", "content": text})
            ids, mask = chat_batch(tok, [histories[i] for i in rows], settings.batch_size)
            full_rows = np.concatenate([rows, np.zeros(settings.batch_size - len(rows), int)])
            lora = method.lora_for_rows(memory, full_rows)
            t = time.perf_counter()
            new = method.generate(shine.base, memory, [start + i for i in rows], ids, mask, settings.max_new_tokens,
                                  lora)
            gen_s += time.perf_counter() - t
            texts = [s.strip() for s in shine.base.decode(new[: len(rows)])]
            for i, pred in zip(rows, texts):
                gold = docs[i]["qa"][turn]["answers"]
                f, e = best_f1(pred, gold), best_em(pred, gold)
                f1s.append(f)
                ems.append(e)
                contains.append(best_contains(pred, gold))
                per_turn.setdefault(turn, []).append(f)
                histories[i].append({"role": "assistant", "content": pred})
                answers[i].append(pred)
        predictions += [{"id": d.get("id"), "answers": a} for d, a in zip(docs, answers)]
        if progress is not None:
            progress.update(len(docs))
    n_q = len(f1s)
    return {
        "f1": float(np.mean(f1s)), "em": float(np.mean(ems)), "contains": float(np.mean(contains)),
        "questions": n_q, "documents": len(records),
        "per_turn_f1": [float(np.mean(per_turn[t])) for t in sorted(per_turn)],
        "doc_cost_s": prep_s / len(records), "gen_s_per_question": gen_s / n_q,
        "storage_bytes_per_doc": method.storage_bytes(shine, contexts),
        "predictions": predictions, **method.extra_results(),
    }


def evaluate(shine, records: Sequence[dict], method_names: Sequence[str], settings: EvalSettings | None = None,
             on_long: str = "truncate", skip_bad: bool = False, show_progress: bool = True,
             bank: Sequence[str] | None = None) -> dict:
    """Every method on ``records``; ``bank``: extra documents for the bank setting (None: each method is given its
    document; ``rag`` and ``memory3`` then search only that document's chunks)."""
    settings = settings or EvalSettings()
    max_doc = settings.max_doc_tokens or shine.max_evidence_length
    records = check_records(shine, records, max_doc, on_long, skip_bad)
    if not records:
        raise BadRecord("no document left to evaluate")
    methods = make_methods(method_names, settings, max_doc)
    check_document_count(method_names, len(records))  # before the first method runs, not after sft's minutes
    results: dict[str, Any] = {"settings": dataclasses.asdict(settings), "max_doc_tokens": max_doc, "methods": {}}
    contexts = None
    if bank is not None or any(name in RETRIEVING for name in method_names):
        bank_docs, record_docs = bank_of(records, bank or [])
        retrieval = settings.retrieval
        retrieval.check()  # before the embedder loads
        embedder = make_embedder(retrieval.embedder, shine.base)
        index = None
        if bank is not None or "rag" in method_names:  # memory3 alone embeds its own references
            t = time.perf_counter()
            index = ChunkIndex.build(bank_docs, embedder, shine.base.tokenizer, retrieval)
            results["retrieval"] = {"documents": len(bank_docs), "chunks": len(index),
                                    "index_s_per_document": (time.perf_counter() - t) / len(bank_docs)}
        if bank is not None:
            routed = index.route([r["qa"][0]["question"] for r in records])
            contexts = [bank_docs[d] for d in routed]
            results["bank"] = {"documents": len(bank_docs),
                               "routed_to_own_document": float(np.mean(routed == record_docs))}
        for method in methods:
            method.attach(index, embedder, record_docs, whole_bank=bank is not None, bank_docs=bank_docs)
    for method in methods:
        bar = None
        if show_progress:
            from tqdm import tqdm
            bar = tqdm(total=len(records), desc=f"eval {method.name}", unit="doc", dynamic_ncols=True)
        results["methods"][method.name] = run_method(shine, method, records, settings, bar, contexts)
        if bar is not None:
            bar.close()
    return results


def bank_of(records: Sequence[dict], extra: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(the bank: each distinct document once, the evaluated ones first, then ``extra``; each record's index in it)."""
    position: dict[str, int] = {}
    for text in [r["context"] for r in records] + [t for t in extra if t.strip()]:
        position.setdefault(text, len(position))
    return list(position), np.array([position[r["context"]] for r in records], int)
