"""Which part of family2 does a base fail to read? `icl` F1 on family2 with one ingredient swapped at a time.

    .venv/bin/python experiments/probe_family2_parts.py BASE_DIR [--docs 24]

BASE_DIR is a BaseModel folder or a Hugging Face folder. Family2 (``corpus.make_family2_documents``) differs from
the training text in its syllables (names and half of the values) and in its fact and question phrasings; this
builds family2-like documents with each of those replaced by the training one in turn (by swapping
``corpus.FAMILY2_SYLLABLES`` / ``FAMILY2_FACT_TEMPLATES`` / ``FAMILY2_QUESTION_TEMPLATES`` while the documents are
made) and prints the `icl` F1 of each variant (greedy, 16 new tokens, one conversation per document).
"""

from __future__ import annotations

import argparse
import types

from shine_jax.base_model import BaseModel
from shine_jax.data import corpus
from shine_jax.eval.harness import run_method
from shine_jax.eval.methods import EvalSettings, make_methods


def documents(num_docs: int, syllables, facts, questions) -> list[dict]:
    saved = (corpus.FAMILY2_SYLLABLES, corpus.FAMILY2_FACT_TEMPLATES, corpus.FAMILY2_QUESTION_TEMPLATES)
    corpus.FAMILY2_SYLLABLES, corpus.FAMILY2_FACT_TEMPLATES, corpus.FAMILY2_QUESTION_TEMPLATES = \
        syllables, facts, questions
    try:
        return corpus.make_family2_documents(num_docs, 0)
    finally:
        corpus.FAMILY2_SYLLABLES, corpus.FAMILY2_FACT_TEMPLATES, corpus.FAMILY2_QUESTION_TEMPLATES = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("--docs", type=int, default=24)
    a = p.parse_args()
    model = types.SimpleNamespace(base=BaseModel.open(a.base))
    settings = EvalSettings(batch_size=16, max_new_tokens=16)
    icl = make_methods(["icl"], settings, max_doc_tokens=1024)[0]
    f2 = (corpus.FAMILY2_SYLLABLES, corpus.FAMILY2_FACT_TEMPLATES, corpus.FAMILY2_QUESTION_TEMPLATES)
    train_facts = tuple(t for t in corpus.FACT_TEMPLATES if t.split == "train")
    train_questions = tuple(t for t in corpus.QUESTION_TEMPLATES if t.split == "train")
    variants = {
        "family2 itself": f2,
        "training syllables, family2 phrasings": (corpus.TRAIN_SYLLABLES, f2[1], f2[2]),
        "family2 syllables, training phrasings": (f2[0], train_facts, train_questions),
        "family2 syllables, training facts, family2 questions": (f2[0], train_facts, f2[2]),
        "family2 syllables, family2 facts, training questions": (f2[0], f2[1], train_questions),
    }
    for name, parts in variants.items():
        f1 = run_method(model, icl, documents(a.docs, *parts), settings)["f1"]
        print(f"{name:55s} icl F1 {f1:.3f}", flush=True)


if __name__ == "__main__":
    main()
