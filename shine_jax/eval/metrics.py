"""SQuAD-normalised exact match, token F1 and answer containment (max over gold answers)."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse whitespace (the SQuAD v1.1 evaluation script's rules)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def best_f1(prediction: str, golds: Sequence[str]) -> float:
    return max(token_f1(prediction, g) for g in golds)


def best_em(prediction: str, golds: Sequence[str]) -> float:
    return max(exact_match(prediction, g) for g in golds)


def contains_answer(prediction: str, gold: str) -> float:
    """1 when the normalised gold answer occurs, as whole words, in the normalised prediction: credits a right answer
    given in a full sentence ("She attended Brenton University.") that F1 dilutes and EM scores 0."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    return float(bool(ref) and f" {ref} " in f" {pred} ")


def best_contains(prediction: str, golds: Sequence[str]) -> float:
    return max(contains_answer(prediction, g) for g in golds)
