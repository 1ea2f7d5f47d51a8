"""Does a base model answer from the document in its prompt? Teacher-forced answer loss with vs. without it.

    .venv/bin/python experiments/probe_icl.py BASE_DIR [--data-dir workdirs/tiny/data] [--split test] [--docs 64]

BASE_DIR is a BaseModel folder (e.g. ``W/base_pretrain/final``). For the first 4 questions of each document the
question is asked in the ``icl`` format (document, blank line, ``Question: ...``) and alone; the script prints the
mean loss per labelled token (answer, end-of-turn) and the share of answers whose every token is the argmax. A
base that reads shows a clearly lower loss with the document than without.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from shine_jax.base_model import BaseModel
from shine_jax.data import pipelines, prompts, tfds_builder
from shine_jax.train.config import load_config
from shine_jax.train.loop import corpus_overrides


def answer_scores(base: BaseModel, rows, length: int, batch: int = 32) -> tuple[float, float]:
    tok = base.tokenizer
    total, count, exact = 0.0, 0, 0
    for s in range(0, len(rows), batch):
        padded = [pipelines.left_pad(ids[-length:], length, tok.pad_token_id, labels[-length:]) for ids, labels in rows[s:s + batch]]
        ids, mask, labels = (np.stack([p[k] for p in padded]) for k in ("ids", "mask", "labels"))
        logits = np.asarray(base.logits(ids, mask))[:, :-1]
        logp = np.asarray(jax.nn.log_softmax(logits, -1))
        target, valid = labels[:, 1:], labels[:, 1:] >= 0
        ll = np.take_along_axis(logp, np.maximum(target, 0)[..., None], -1)[..., 0]
        total += float(-(ll * valid).sum())
        count += int(valid.sum())
        exact += int(((logits.argmax(-1) == target) | ~valid).all(-1).sum())
    return total / count, exact / len(rows)


def document(record: dict, answer: str, fact: bool) -> str:
    if not fact:
        return record["context"]
    return pipelines.stating_sentence(record["context"], answer) or record["context"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("--data-dir", default="workdirs/tiny/data")
    p.add_argument("--split", default="test")
    p.add_argument("--builder-config", default="mqa")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--length", type=int, default=384)
    p.add_argument("--fact", action="store_true", help="the prompt holds only the sentence stating the answer")
    a = p.parse_args()
    cfg = load_config("configs/tiny.py:base_pretrain")
    base = BaseModel.load(a.base)
    ds = tfds_builder.load_split(f"{a.data_dir}/tfds", a.split, config=a.builder_config, **corpus_overrides(cfg))
    records = [ds[i] for i in range(min(a.docs, len(ds)))]
    for name, with_doc in (("with the document", True), ("question only", False)):
        rows = [prompts.chat_turns(base.tokenizer, [(prompts.icl_user_text(document(r, ans, a.fact), q) if with_doc else q, ans)])
                for r in records for q, ans in pipelines.qa_turns(r)[:4]]
        loss, exact = answer_scores(base, rows, a.length)
        print(f"{name:18s} answer loss/token {loss:.4f}   exact answers {exact:.3f}   ({len(rows)} questions)")


if __name__ == "__main__":
    main()
