"""The demo's test sets, like the paper's SQuAD and SQuAD-N: documents of the test split's people (never seen in
training), built straight from ``corpus`` so that every set is a pure function of the corpus seed.

* ``one_person``  — one person per document (``corpus.make_documents`` with ``min_people = max_people = 1``);
* ``distractors`` — the same documents and questions, each padded with k unrelated bios of other test-split
  people, k drawn per document from a range (default 1-3; ``corpus.add_distractors``);
* ``family2``     — one-person documents of the second test family, never used in training: other syllables,
  other fact and question phrasings (``corpus.make_family2_documents``).

A set is one entry of :data:`TEST_SETS` (name -> builder of a :class:`SetSpec`), so a third set is one line.
The corpus seed, not the training seed, fixes the sets: runs with different ``--config.seed`` are scored on the
same documents, so their spread is the training's alone.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable, Sequence

from shine_jax.data import corpus
from shine_jax.errors import InputError

DISTRACTORS = (1, 3)  # distractor bios per document, both ends included
MAX_DISTRACTORS = 8  # the same bound as the config field data.distractors
POOL_DOCS = 256  # one-person documents after the set's own, whose bios are the distractors


@dataclasses.dataclass(frozen=True)
class SetSpec:
    people: Sequence[corpus.Person]  # the test split's people
    docs: int  # documents per set
    seed: int = 0  # the corpus seed
    distractors: tuple[int, int] = DISTRACTORS


def one_person(spec: SetSpec) -> list[dict]:
    return corpus.make_documents(spec.people, spec.seed, "test", spec.docs, min_people=1, max_people=1)


def with_distractors(spec: SetSpec) -> list[dict]:
    """``one_person``'s documents and questions, each padded with k in ``spec.distractors`` bios of other people."""
    # make_documents draws one document after another from one stream, so its first ``docs`` documents are
    # one_person's and the rest, about other people or other facts, are the pool; never a train person.
    docs = corpus.make_documents(spec.people, spec.seed, "test", spec.docs + POOL_DOCS, min_people=1, max_people=1)
    records, pool = docs[: spec.docs], docs[spec.docs:]
    rng = random.Random(f"{spec.seed}/test/eval-distractors")
    low, high = spec.distractors
    return [corpus.add_distractors(r, pool, rng.randint(low, high), rng) for r in records]


def family2(spec: SetSpec) -> list[dict]:
    """One-person documents of the second test family: names and values from syllables no training text uses,
    facts and questions in phrasings of their own (``corpus.make_family2_documents``)."""
    return corpus.make_family2_documents(spec.docs, spec.seed)


TEST_SETS: dict[str, Callable[[SetSpec], list[dict]]] = {
    "one_person": one_person,
    "distractors": with_distractors,
    "family2": family2,
}


def bank_extras(name: str, spec: SetSpec, bank_size: int) -> list[str]:
    """Documents to fill set ``name``'s bank up to ``bank_size`` documents: the same builder asked for more documents,
    those after the set's own (the builders draw one document after another, so the set's own are unchanged)."""
    more = max(bank_size - spec.docs, 0)
    return [r["context"] for r in TEST_SETS[name](dataclasses.replace(spec, docs=spec.docs + more))[spec.docs:]]


def people_of_test_split(num_people: int, seed: int) -> list[corpus.Person]:
    """The test split's people, exactly as the bundled corpus splits them."""
    return corpus.split_people(corpus.make_people(num_people, seed), seed)["test"]


def build_sets(names: Sequence[str], spec: SetSpec) -> dict[str, list[dict]]:
    check_set_names(names)
    return {name: TEST_SETS[name](spec) for name in names}


def check_set_names(names: Sequence[str], option: str = "--sets") -> None:
    unknown = [n for n in names if n not in TEST_SETS]
    if unknown or not names:
        raise InputError(f"{option} must name sets from {', '.join(TEST_SETS)}, got {', '.join(names) or 'none'}")


def parse_range(text: str, option: str = "--distractors", maximum: int = MAX_DISTRACTORS) -> tuple[int, int]:
    """``"1-3"`` -> (1, 3), ``"2"`` -> (2, 2); anything else, or a range outside [0, maximum], is a one-line error."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    low, high = (int(m[1]), int(m[2] or m[1])) if m else (-1, -1)
    if not 0 <= low <= high <= maximum:
        raise InputError(f"{option} must be MIN-MAX (or one number) with 0 <= MIN <= MAX <= {maximum}, "
                         f"got {text!r}")
    return low, high
