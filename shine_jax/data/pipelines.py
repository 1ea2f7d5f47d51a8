"""Grain pipelines for every training stage (SHINE_SPEC §7-§8).

Each stage maps document-QA records to fixed-length, left-padded int32 arrays:

* ``base_pretrain`` (tiny only): language modelling on bios and chat-formatted QA, with and without the document
  in the prompt, so the from-scratch base can read, answer and answer in context (the ``icl`` baseline).
* ``pretrain``: SHINE's RECON / COMP objectives. Several texts are packed into one evidence (joined by
  ``<|endoftext|>``); RECON asks ``<RECON>`` -> the evidence text, COMP keeps a 70-90 % word prefix as evidence
  and asks ``<COMP>`` -> the full text (the official collator's choice).
* ``ift_mqa`` / ``ift_1qa``: the document is the evidence (optionally padded with distractor bios); the
  conversation holds all of its QA turns (multi-QA) or one (single-QA). Labels cover only the answer tokens,
  the closing end-of-turn token and what follows it up to the next turn (official ``mask_label``).

Randomness is a function of (seed, example index) through Grain's ``random_map``, and the iterator state goes into
checkpoints, so a resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import functools
import random
import re
import warnings
from collections.abc import Sequence

import grain
import numpy as np

from shine_jax import stages as stages_lib
from shine_jax.data import corpus, text_corpus
from shine_jax.data.prompts import COPY_PROMPT, IGNORE, SEP, chat_turns, encode_text, icl_user_text
from shine_jax.errors import InputError

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
LM_PACK_CANDIDATES = 12  # records offered to one packed base-pretraining row
LM_PACK_MIN_ROOM = 24  # a row with less room left is full (the shortest examples are ~25 tokens)
TEACHER_MARGIN = 16  # KL teacher: tokens beyond evidence + conversation for the in-context prompt's wrapping


# ----------------------------------------------------------------------------------------------- tokenising
def left_pad(ids: Sequence[int], length: int, pad_id: int, labels: Sequence[int] | None = None):
    ids = list(ids)[:length]
    n = len(ids)
    out = {"ids": np.full(length, pad_id, np.int32), "mask": np.zeros(length, np.int32)}
    out["ids"][length - n:] = ids
    out["mask"][length - n:] = 1
    if labels is not None:
        out["labels"] = np.full(length, IGNORE, np.int32)
        out["labels"][length - n:] = list(labels)[:length]
    return out


ON_LONG = ("truncate", "refuse")


def document_tokens(tok, text: str, limit: int, on_long: str = "truncate", name: str = "the document") -> list[int]:
    """The one document policy of ``ask``, ``eval`` and ``internalize``: a document's tokens (``encode_text``), an
    empty document refused (``InputError``), one longer than ``limit`` tokens truncated to its first ``limit`` with
    a warning giving both lengths, or refused with ``on_long="refuse"``."""
    if on_long not in ON_LONG:
        raise InputError(f"on_long must be 'truncate' or 'refuse', got {on_long!r}")
    if not text.strip():
        raise InputError(f"{name} is empty")
    ids = encode_text(tok, text)
    if len(ids) > limit:
        if on_long == "refuse":
            raise InputError(f"{name} has {len(ids)} tokens, more than the maximum {limit} (--on-long refuse; "
                             f"--on-long truncate keeps its first {limit})")
        warnings.warn(f"{name} has {len(ids)} tokens, more than the maximum {limit}; truncated to its first {limit}",
                      stacklevel=3)
    return ids[:limit]


def encode_evidence(tok, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Documents as the hypernetwork reads them, in training and at inference alike: tokens without special
    tokens, the first ``length`` kept, left-padded to ``length`` -> (ids, mask), both ``[len(texts), length]``."""
    return pad_evidence(tok, [encode_text(tok, t) for t in texts], length)


def pad_evidence(tok, token_ids: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """``encode_evidence`` for documents already tokenised (``encode_text``)."""
    rows = [left_pad(ids, length, tok.pad_token_id) for ids in token_ids]
    return (np.stack([r["ids"] for r in rows]).reshape(len(rows), length),
            np.stack([r["mask"] for r in rows]).reshape(len(rows), length))


# ----------------------------------------------------------------------------------------------- examples
_REPORTED_LONG: set[str] = set()


def warn_long(what: str, n: int, limit: int, field: str, kept: str) -> None:
    """A training row longer than its padded length is cut (the official collators truncate too); the first one
    of each kind is reported with both lengths, the rest of the stage silently."""
    if n > limit and what not in _REPORTED_LONG:
        _REPORTED_LONG.add(what)
        warnings.warn(f"a training {what} has {n} tokens, more than {field}={limit}: its {kept} {limit} are kept "
                      f"(later ones are cut without a warning; raise {field} to keep them whole)", stacklevel=2)


def shine_example(tok, evidence: str, turns, lengths: tuple[int, int], teacher: bool = False) -> dict[str, np.ndarray]:
    """Evidence and conversation, left-padded; ``teacher`` adds the in-context teacher of the KL loss."""
    ctx_len, conv_len = lengths
    ev_ids = encode_text(tok, evidence)
    warn_long("evidence", len(ev_ids), ctx_len, "data.context_length", "first")
    ev, ev_mask = pad_evidence(tok, [ev_ids], ctx_len)
    ids, labels = chat_turns(tok, turns)
    warn_long("conversation", len(ids), conv_len, "data.conversation_length", "first")
    conv = left_pad(ids, conv_len, tok.pad_token_id, labels)
    out = {"evidence_ids": ev[0], "evidence_mask": ev_mask[0], "input_ids": conv["ids"],
           "attention_mask": conv["mask"], "labels": conv["labels"]}
    if teacher:  # the teacher reads what the LoRA is generated from: a truncated evidence truncated too
        seen = evidence if len(ev_ids) <= ctx_len else tok.decode(ev_ids[:ctx_len])
        out.update(teacher_example(tok, seen, turns, ids, labels, conv_len, teacher_length(ctx_len, conv_len)))
    return out


def teacher_length(context_length: int, conversation_length: int) -> int:
    """The teacher's padded length: evidence + conversation + room for what ``icl_user_text`` adds around the
    document (measured: 6 tokens with the tiny tokenizer, so a full evidence would not fit without it)."""
    return context_length + conversation_length + TEACHER_MARGIN


def teacher_example(tok, evidence: str, turns, ids: list[int], labels: list[int], conv_len: int,
                    length: int) -> dict[str, np.ndarray]:
    """The KL loss's teacher: the same conversation with the document before the first question (exactly the
    ``icl`` baseline's prompt), left-padded to ``length``.

    Student and teacher differ only up to the end of the first question, so once both are left-padded their last
    tokens coincide: student position ``j`` is teacher position ``j + length - conv_len``. Where the student's
    conversation is cut at ``conv_len`` the teacher is cut by as many tokens, which keeps that. The shared tail is
    checked token by token; a row where it does not hold (the teacher does not fit ``length``, no label survived
    the cut, or the tokenizer merged across the question's end) is all padding, which the loss reads as "no
    teacher" (masked out)."""
    (question, answer), rest = turns[0], list(turns[1:])
    t_ids, _ = chat_turns(tok, [(icl_user_text(evidence, question), answer)] + rest)
    cut = max(0, len(ids) - conv_len)  # tokens left_pad drops from the end of the student's conversation
    t_ids = t_ids[:len(t_ids) - cut]
    first = next((i for i, label in enumerate(labels[:conv_len]) if label != IGNORE), None)
    tail = ids[first - 1:len(ids) - cut] if first else []  # from the position that predicts the first label
    ok = bool(tail) and len(t_ids) <= length and t_ids[len(t_ids) - len(tail):] == tail
    padded = left_pad(t_ids if ok else [], length, tok.pad_token_id)
    return {"teacher_input_ids": padded["ids"], "teacher_attention_mask": padded["mask"]}


def qa_turns(record: dict) -> list[tuple[str, str]]:
    return [(qa["question"], qa["answers"][0]) for qa in record["qa"]]


def split_words(text: str, keep: float) -> str:
    words = text.split()
    k = min(max(1, round(len(words) * keep)), max(1, len(words) - 1))
    return " ".join(words[:k])


def pretrain_example(texts: Sequence[str], rng: np.random.Generator, tok, data_cfg) -> dict[str, np.ndarray]:
    text = SEP.join(texts) if len(texts) > 1 else texts[0]
    if rng.random() < data_cfg.comp_fraction:
        keep = rng.uniform(data_cfg.comp_keep_min, data_cfg.comp_keep_max)
        evidence, prompt = split_words(text, keep), "<COMP>"
    else:
        evidence, prompt = text, "<RECON>"
    return shine_example(tok, evidence, [(prompt, text)], (data_cfg.context_length, data_cfg.conversation_length))


def pack_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Greedy consecutive grouping of texts whose token lengths (+1 separator each) fit ``budget``."""
    groups, cur, used = [], [], 0
    for i, n in enumerate(lengths):
        if cur and used + n + 1 > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n + 1
    if cur:
        groups.append(cur)
    return groups


def stating_sentence(context: str, answer: str) -> str | None:
    """The first sentence of ``context`` that contains ``answer`` (None if no sentence does)."""
    return next((t for t in SENTENCE_END.split(context) if answer in t), None)


def stating_paragraph(context: str, answer: str) -> str | None:
    """The first paragraph (blank-line separated; one person's bio) of ``context`` that contains ``answer``."""
    return next((t for t in context.split("\n\n") if answer in t), None)


def lm_sequence(record: dict, rng: np.random.Generator, tok, data_cfg) -> tuple[list[int], list[int]]:
    """One base-model pretraining text (unpadded ids, labels): bio, QA without the bio, or the bio in the prompt
    followed by QA turns (chat).

    The mix is ``data_cfg.lm_mix`` (bio, QA only, in-context QA). In-context examples ask as many of the document's
    questions (shuffled) as fit in ``lm_length`` without cutting the document, so most of each sequence's answers are
    copies from the prompt; with ``lm_answer_loss`` QA examples are scored on the answers only (chat labels), so the
    copying signal is not diluted by the unpredictable facts of the bio (those are learnt from the bio examples).
    A share ``lm_fact_share`` of the in-context examples puts only the sentence that states the answer in the
    prompt, with one question: the shortest form of reading, a curriculum step towards whole documents. A share
    ``lm_person_share`` puts only the paragraph of the person asked about, with that person's questions: the
    next step (find the right sentence), before whole documents (also find the right person). A share
    ``lm_fresh_share`` of the examples replaces the record by a document about freshly generated people
    (``corpus.fresh_document``, 1..``lm_fresh_max_people`` people): their names and most values occur in no other
    text, so the answer loss falls only by copying from the prompt, not by recalling the corpus. A share
    ``lm_broad_share`` replaces the record by a ``corpus.broad_document``: names and values of any letter shape,
    facts in key-value frames with invented keys, so reading cannot lean on the corpus's names and phrasings; a share
    ``lm_relation_share`` by a ``corpus.relation_document`` (every fact stated and asked by an invented relation
    word). A share
    ``lm_copy_share`` asks for the document back verbatim (``COPY_PROMPT``, answer-scored): every answer token is
    a copy, which teaches the copying circuit long before question answering alone would.
    """
    mix, length, max_q = tuple(data_cfg.lm_mix), data_cfg.lm_length, data_cfg.lm_questions
    # a share of 0 draws nothing, so the default stream of examples is what it was before these options
    if data_cfg.lm_fresh_share > 0 and rng.random() < data_cfg.lm_fresh_share:  # answers nobody can recall
        record = corpus.fresh_document(random.Random(int(rng.integers(2**63))),
                                       max_people=data_cfg.lm_fresh_max_people)
    if data_cfg.lm_broad_share > 0 and rng.random() < data_cfg.lm_broad_share:  # reading without the corpus's cues
        record = corpus.broad_document(random.Random(int(rng.integers(2**63))),
                                       max_people=data_cfg.lm_fresh_max_people)
    if data_cfg.lm_relation_share > 0 and rng.random() < data_cfg.lm_relation_share:  # reading by a shared word
        record = corpus.relation_document(random.Random(int(rng.integers(2**63))),
                                          max_people=data_cfg.lm_fresh_max_people)
    if data_cfg.lm_copy_share > 0 and rng.random() < data_cfg.lm_copy_share:  # the plainest lesson in reading
        paragraph = record["context"].split("\n\n")[0]  # one person's bio: short enough to pack
        ids, labels = chat_turns(tok, [(f"{COPY_PROMPT}\n\n{paragraph}", paragraph)])
        if len(ids) <= length:  # a longer one would lose its prompt to the row's cut: ask questions instead
            return ids, labels
    turns = qa_turns(record)
    order = rng.permutation(len(turns))
    turns = [turns[i] for i in order]
    u = rng.random() * sum(mix)
    if u < mix[0]:
        ids = encode_text(tok, record["context"]) + [tok.eos_token_id]
        return ids, ids
    n = int(rng.integers(1, min(max_q or len(turns), len(turns)) + 1))
    in_context = u >= mix[0] + mix[1]
    context = record["context"]
    fact, person = data_cfg.lm_fact_share, data_cfg.lm_person_share
    v = rng.random() if in_context and (fact > 0 or person > 0) else 1.0
    if v < fact:
        sentence = stating_sentence(context, turns[0][1])
        if sentence is not None:
            context, n = sentence, 1
    elif v < fact + person:
        paragraph = stating_paragraph(context, turns[0][1])
        if paragraph is not None:
            context = paragraph
            turns = [t for t in turns if t[1] in paragraph]  # this person's questions, the first one kept first
            n = min(n, len(turns))
    while True:
        chosen = turns[:n]
        if in_context:
            chosen = [(icl_user_text(context, chosen[0][0]), chosen[0][1])] + chosen[1:]
        ids, chat_labels = chat_turns(tok, chosen)
        if len(ids) <= length or n == 1:
            break
        n = max(1, n * length // len(ids))  # drop questions rather than the start of the document
    return ids, (chat_labels if data_cfg.lm_answer_loss else ids)


def lm_example(record: dict, rng: np.random.Generator, tok, data_cfg) -> dict[str, np.ndarray]:
    """One ``lm_sequence`` per row, left-padded to ``lm_length`` (a longer one keeps its end): a packed row offered
    a single record."""
    return packed_lm_example([record], rng, tok, data_cfg)


def packed_lm_example(records: Sequence[dict], rng: np.random.Generator, tok, data_cfg) -> dict[str, np.ndarray]:
    """Several ``lm_sequence``s from ``records`` back to back in one row of ``lm_length`` (``data.lm_pack``).

    Short examples (a fact sentence and its question are ~30 tokens) would otherwise be mostly padding. As in
    GPT-style packing there is no attention mask between the examples of a row: every example starts with its own
    chat or text marker, and an earlier example only adds unrelated people before the current one.
    """
    length = data_cfg.lm_length
    ids: list[int] = []
    labels: list[int] = []
    for record in records:
        if length - len(ids) < LM_PACK_MIN_ROOM:
            break
        seq, lab = lm_sequence(record, rng, tok, data_cfg)
        if ids and len(ids) + len(seq) > length:
            continue  # first fit: a later, shorter example may still fill the rest
        ids, labels = ids + seq, labels + lab
    out = left_pad(ids[-length:], length, tok.pad_token_id, labels[-length:])
    return {"input_ids": out["ids"], "attention_mask": out["mask"], "labels": out["labels"]}


# ----------------------------------------------------------------------------------------------- datasets
def copy_warmup_row(rng: np.random.Generator, tok, length: int) -> dict[str, np.ndarray]:
    """A base-pretraining row of synthetic copying: spans of 8-32 random tokens, each followed by a separator and
    the same span again, labelled on the repeats only, packed up to ``length``. Copying a span of varying length
    needs copying by content (an induction circuit), the skill reading a document relies on; the bios teach it only
    slowly. Measured (experiments/results/tiny_reading_curricula.md): 400 warm-up steps of these rows before the
    curriculum raised one-person `icl` F1 from 0.10 to 0.17, though the circuit had not fully formed by then."""
    first = max(tok.all_special_ids) + 1
    ids: list[int] = []
    labels: list[int] = []
    while length - len(ids) >= 2 * 8 + 1:
        n = int(rng.integers(8, min(32, (length - len(ids) - 1) // 2) + 1))
        span = rng.integers(first, len(tok), n).tolist()
        ids += span + [tok.eos_token_id] + span
        labels += [IGNORE] * (n + 1) + span
    out = left_pad(ids, length, tok.pad_token_id, labels)
    return {"input_ids": out["ids"], "attention_mask": out["mask"], "labels": out["labels"]}


def stage_dataset(stage: str, records: Sequence[dict], tok, data_cfg, seed: int, *, distractor_pool=None,
                  shard_index: int = 0, shard_count: int = 1, repeat: bool = True, copy_warmup_rows: int = 0,
                  teacher: bool = False) -> grain.MapDataset:
    """A shuffled (per epoch), per-host-sharded MapDataset of single examples for ``stage``; ``teacher`` (IFT
    stages) adds the KL loss's ``teacher_input_ids`` / ``teacher_attention_mask``. SHINE pretraining with
    ``data.pretrain_files`` streams that corpus instead (``text_corpus.PackedTextDataset``, an IterDataset);
    its validation stays on ``records``."""
    dataset = stages_lib.stage(stage).dataset
    if dataset == "recon_comp" and data_cfg.get("pretrain_files") and repeat:  # a text corpus, streamed
        return text_corpus.PackedTextDataset(data_cfg.pretrain_files, tok, data_cfg, seed, shard_index, shard_count,
                                             functools.partial(pretrain_example, tok=tok, data_cfg=data_cfg))
    ds = grain.MapDataset.source(list(records))
    if dataset == "recon_comp":
        texts = [r["context"] for r in records]
        order = np.random.default_rng(seed).permutation(len(texts))
        texts = [texts[i] for i in order]
        if data_cfg.pack_texts:
            lengths = [len(encode_text(tok, t)) for t in texts]
            groups = pack_groups(lengths, data_cfg.context_length)
        else:
            groups = [[i] for i in range(len(texts))]
        ds = grain.MapDataset.source([[texts[i] for i in g] for g in groups])
        fn = functools.partial(_pretrain_map, tok=tok, data_cfg=data_cfg)
    elif dataset == "lm":
        fn = functools.partial(_lm_map, tok=tok, data_cfg=data_cfg)
        if data_cfg.lm_pack and repeat:  # training stream only: validation rows stay one example each
            ds = ds[shard_index::shard_count].shuffle(seed=seed).repeat(None)
            ds = ds.batch(LM_PACK_CANDIDATES, batch_fn=list)  # the records offered to one row
            if copy_warmup_rows:  # the first rows teach copying (copy_warmup_row), then the curriculum
                return ds.map_with_index(functools.partial(_warm_or_packed_lm_map, tok=tok, data_cfg=data_cfg,
                                                           seed=(seed, shard_index), warm_rows=copy_warmup_rows))
            return ds.random_map(functools.partial(_packed_lm_map, tok=tok, data_cfg=data_cfg), seed=seed + 1)
    elif dataset in ("multi_qa", "single_qa"):
        if dataset == "single_qa":
            ds = grain.MapDataset.source(corpus.to_single_qa(list(records)))
        fresh = data_cfg.ift_fresh_share if repeat and dataset == "multi_qa" else 0.0  # training stream only
        fn = functools.partial(_ift_map, tok=tok, data_cfg=data_cfg, pool=distractor_pool, teacher=teacher,
                               fresh_share=fresh)
    else:
        raise ValueError(f"stage {stage!r} has no dataset builder for {dataset!r}")
    ds = ds[shard_index::shard_count].shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)  # reseeds the shuffle each epoch
    return ds.random_map(fn, seed=seed + 1)


def _pretrain_map(texts, rng, *, tok, data_cfg):
    return pretrain_example(texts, rng, tok, data_cfg)


def _lm_map(record, rng, *, tok, data_cfg):
    return lm_example(record, rng, tok, data_cfg)


def _packed_lm_map(records, rng, *, tok, data_cfg):
    return packed_lm_example(records, rng, tok, data_cfg)


def _warm_or_packed_lm_map(index, records, *, tok, data_cfg, seed, warm_rows):
    rng = np.random.default_rng([*seed, index])  # a function of (seed, host, row index): exact resume
    if index < warm_rows:
        return copy_warmup_row(rng, tok, data_cfg.lm_length)
    return packed_lm_example(records, rng, tok, data_cfg)


def _ift_map(record, rng, *, tok, data_cfg, pool, teacher=False, fresh_share=0.0):
    if fresh_share and rng.random() < fresh_share:  # an adapter must carry strings no other document holds
        record = corpus.fresh_document(random.Random(int(rng.integers(2**63))),
                                       max_people=data_cfg.ift_fresh_max_people)
    context = record["context"]
    if data_cfg.distractors and pool:
        rng_py = random.Random(int(rng.integers(2**31)))
        context = corpus.add_distractors(record, pool, data_cfg.distractors, rng_py)["context"]
    return shine_example(tok, context, qa_turns(record), (data_cfg.context_length, data_cfg.conversation_length),
                         teacher=teacher)
