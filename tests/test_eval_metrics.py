import pytest

from shine_jax.eval.metrics import (
    best_contains,
    best_em,
    best_f1,
    contains_answer,
    exact_match,
    normalize_answer,
    token_f1,
)


def test_normalisation():
    assert normalize_answer("The  Quick, brown FOX!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"


@pytest.mark.parametrize("pred,gold,f1", [
    ("Paris", "paris", 1.0),
    ("the city of Paris", "Paris", 2 * (1 / 3) * 1 / (1 / 3 + 1)),
    ("March 4, 1961", "March 4 1961", 1.0),
    ("London", "Paris", 0.0),
    ("", "Paris", 0.0),
    ("a", "the", 1.0),  # both normalise to empty
    ("red red blue", "red blue blue", 2 / 3),
])
def test_token_f1(pred, gold, f1):
    assert token_f1(pred, gold) == pytest.approx(f1)


def test_max_over_golds():
    assert best_f1("Dunmere", ["Caldris", "Dunmere"]) == 1.0
    assert best_em("the Dunmere.", ["Caldris", "dunmere"]) == 1.0
    assert exact_match("Dunmere Town", "Dunmere") == 0.0


@pytest.mark.parametrize("pred,gold,hit", [
    ("Wrenna Harrowell attended Brenton University.", "Brenton University", 1.0),  # a full sentence is credited
    ("Brenton University", "the Brenton University", 1.0),  # articles and case normalised away
    ("Brentonville College", "Brenton", 0.0),  # whole words only: a longer word is not the answer
    ("London", "Paris", 0.0),
    ("anything", "", 0.0),  # an empty gold never matches
])
def test_contains_answer(pred, gold, hit):
    assert contains_answer(pred, gold) == hit


def test_contains_max_over_golds():
    assert best_contains("born in Caldris in 1961", ["Dunmere", "Caldris"]) == 1.0
    assert best_contains("born in 1961", ["Dunmere", "Caldris"]) == 0.0
