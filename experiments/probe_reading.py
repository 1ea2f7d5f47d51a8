"""Does a base model read? `none` and `icl` F1/EM on one-person documents of both test families.

    .venv/bin/python experiments/probe_reading.py BASE_DIR [--docs 48] [--seed 0] [--people 1] [--out OUT.json]

BASE_DIR is a BaseModel folder (e.g. ``W/base_pretrain/final``) or a Hugging Face folder (e.g. ``models/tiny_base``). Family 1 is the bundled corpus's test split (test
people, test phrasings included); family 2 (``corpus.make_family2_documents``) has names and values from syllables
no training text uses and fact and question phrasings of its own. Each document's questions are asked in order as
one conversation, exactly as ``shine-jax eval`` asks them, with greedy decoding. Prints one line per family and
method; with ``--out`` also writes them as JSON. A base that reads has `icl` far above `none` on both families.
"""

from __future__ import annotations

import argparse
import json
import types

from shine_jax.base_model import BaseModel
from shine_jax.data import corpus
from shine_jax.eval import testsets
from shine_jax.eval.harness import run_method
from shine_jax.eval.methods import EvalSettings, make_methods


def family1(num_docs: int, seed: int, people: int) -> list[dict]:
    """The demo's ``one_person`` set (``people`` = 1), or the same construction with more people per document."""
    spec = testsets.SetSpec(testsets.people_of_test_split(corpus.DEFAULT_NUM_PEOPLE, seed), num_docs, seed)
    if people == 1:
        return testsets.one_person(spec)
    return corpus.make_documents(spec.people, seed, "test", num_docs, min_people=people, max_people=people)


def family2(num_docs: int, seed: int, people: int) -> list[dict]:
    return corpus.make_family2_documents(num_docs, seed, min_people=people, max_people=people)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("--docs", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--people", type=int, default=1, help="people per document")
    p.add_argument("--out", default="")
    a = p.parse_args()
    base = BaseModel.open(a.base)
    model = types.SimpleNamespace(base=base)  # none and icl only need the base
    settings = EvalSettings(batch_size=16, max_new_tokens=16)
    rows = []
    for family, records in (("family1", family1(a.docs, a.seed, a.people)),
                            ("family2", family2(a.docs, a.seed, a.people))):
        for method in make_methods(["none", "icl"], settings, max_doc_tokens=1024):
            r = run_method(model, method, records, settings)
            row = {"family": family, "method": method.name, "f1": r["f1"], "em": r["em"], "questions": r["questions"]}
            rows.append(row)
            print(f"{family}  {method.name:5s}  F1 {r['f1']:.3f}  EM {r['em']:.3f}  ({r['questions']} questions)",
                  flush=True)
            if method.name == "icl":
                for d, pred in list(zip(records, r["predictions"]))[:2]:
                    print("   ", [(q["answers"][0], ans) for q, ans in zip(d["qa"], pred["answers"])][:4])
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"base": a.base, "docs": a.docs, "seed": a.seed, "people": a.people, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
