"""The synthetic biography corpus: determinism, person-disjoint splits, answerable and name-bound QA, held-out
phrasings, distractors, and the JSONL reader's error reporting."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
import re

import pytest

from shine_jax.data import corpus as C
from shine_jax.data import pipelines

SEED = 0
DOCS = {"train": 300, "validation": 100, "test": 300}
SENTENCE_BREAK = re.compile(r"(?<=\.) (?=[A-Z])")


@pytest.fixture(scope="module")
def people() -> list[C.Person]:
    return C.make_people(C.DEFAULT_NUM_PEOPLE, SEED)


@pytest.fixture(scope="module")
def by_name(people) -> dict[str, C.Person]:
    return {p.full_name: p for p in people}


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[dict]]:
    return C.build_corpus(seed=SEED, docs_per_split=DOCS)


def sentences(paragraph: str) -> list[str]:
    return SENTENCE_BREAK.split(paragraph)


def matching(text: str, templates) -> list[C.Template]:
    return [t for t in templates if C.template_pattern(t.text).fullmatch(text)]


def only_person(text: str) -> str:
    names = C.find_full_names(text)
    assert len(names) == 1, (names, text)
    return names[0]


# --- tables and people ------------------------------------------------------------------------------------------


def test_tables_are_large_distinct_and_unambiguous():
    assert len(set(C.FIRST_NAMES)) == len(C.FIRST_NAMES) >= 150
    assert len(set(C.LAST_NAMES)) == len(C.LAST_NAMES) >= 150
    name_tokens = set(C.FIRST_NAMES) | set(C.LAST_NAMES)
    values = sorted(set(itertools.chain.from_iterable(C.VALUE_POOLS.values())))
    for attribute, pool in C.VALUE_POOLS.items():
        assert 40 <= len(set(pool)) == len(pool) <= 100, attribute
    for value in values:
        # No value contains a name (find_full_names stays exact) and no value sits inside another one (an answer
        # found in the context is the fact itself, not part of an unrelated value).
        assert not set(re.findall(r"[\w-]+", value)) & name_tokens, value
        assert "." not in value and "\n" not in value, value
        for other in values:
            assert other == value or not re.search(rf"\b{re.escape(value)}\b", other), (value, other)
    for templates in (C.FACT_TEMPLATES, C.QUESTION_TEMPLATES):
        for attribute in C.ATTRIBUTES:
            mine = [t for t in templates if t.attribute == attribute]
            assert len([t for t in mine if t.split == "train"]) >= 3
            assert [t for t in mine if t.split == "test_only"]
            assert len(mine) >= (4 if templates is C.FACT_TEMPLATES else 3)
    for t in C.QUESTION_TEMPLATES:
        assert "{name}" in t.text


def test_make_people(people):
    assert len(people) >= 10_000
    assert len({p.full_name for p in people}) == len(people)
    date = re.compile(rf"({'|'.join(C.MONTHS)}) ([1-9]|[12]\d|3[01]), (19[4-9]\d|200[0-3])")
    for p in people[:2000]:
        assert date.fullmatch(p.birth_date), p.birth_date
        assert p.birth_city != p.residence
        assert p.pronoun in C.PRONOUN_FORMS
        for attribute, pool in C.VALUE_POOLS.items():
            assert p.attribute(attribute) in pool
    with pytest.raises(dataclasses.FrozenInstanceError):
        people[0].job = "astronaut"
    assert C.make_people(50, seed=1) != C.make_people(50, seed=2)


def test_split_people_is_a_partition(people):
    splits = C.split_people(people, SEED)
    names = {s: {p.full_name for p in group} for s, group in splits.items()}
    assert {s: len(g) for s, g in splits.items()} == {"train": 8000, "validation": 1000, "test": 1000}
    assert not names["train"] & names["validation"]
    assert not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert set().union(*names.values()) == {p.full_name for p in people}


# --- documents --------------------------------------------------------------------------------------------------


def test_build_corpus_is_deterministic(tmp_path):
    small = {"train": 40, "validation": 10, "test": 10}
    paths = []
    for run, seed in enumerate((7, 7, 8)):
        built = C.build_corpus(seed=seed, num_people=2000, docs_per_split=small)
        assert {s: len(r) for s, r in built.items()} == small
        path = tmp_path / f"run{run}.jsonl"
        C.write_jsonl([r for s in C.SPLITS for r in built[s]], path)
        paths.append(path.read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_documents_only_use_their_split(corpus, people):
    splits = C.split_people(people, SEED)
    for split, records in corpus.items():
        allowed = {p.full_name for p in splits[split]}
        for record in records:
            assert set(C.find_full_names(record["context"])) <= allowed


def test_qa_is_answerable_and_asks_one_question_per_stated_fact(corpus, by_name):
    people_per_doc = collections.Counter()
    for split, records in corpus.items():
        for record in records:
            assert list(record) == ["id", "context", "qa"]
            assert record["id"].startswith(split)
            context = record["context"]
            paragraphs = context.split("\n\n")
            people_per_doc[len(paragraphs)] += 1
            stated = collections.Counter()
            for paragraph in paragraphs:
                name = only_person(paragraph)
                facts = sentences(paragraph)
                assert 4 <= len(facts) <= 7
                assert name in facts[0], "a bio's first sentence must carry the full name"
                for fact in facts:
                    attributes = {t.attribute for t in matching(fact, C.FACT_TEMPLATES)}
                    assert len(attributes) == 1, fact
                    attribute = attributes.pop()
                    assert by_name[name].attribute(attribute) in fact
                    stated[name, attribute] += 1
            asked = collections.Counter()
            for qa in record["qa"]:
                assert set(qa) == {"question", "answers"}
                name = only_person(qa["question"])
                assert name in context
                (attribute,) = {t.attribute for t in matching(qa["question"], C.QUESTION_TEMPLATES)}
                assert qa["answers"] == [by_name[name].attribute(attribute)]
                assert qa["answers"][0] in context
                asked[name, attribute] += 1
            assert asked == stated, "exactly one question per stated fact, none about unstated ones"
    assert set(people_per_doc) == {1, 2, 3, 4}


def test_multi_person_documents_need_name_binding(corpus, by_name):
    multi = [r for r in corpus["train"] + corpus["test"] if r["context"].count("\n\n") >= 1]
    assert len(multi) > 100
    for record in multi:
        paragraphs = {only_person(p): p for p in record["context"].split("\n\n")}
        binding = 0
        for qa in record["qa"]:
            person = by_name[only_person(qa["question"])]
            (attribute,) = [a for a in C.ATTRIBUTES if person.attribute(a) == qa["answers"][0]]
            for other_name, paragraph in paragraphs.items():
                value = by_name[other_name].attribute(attribute)
                if other_name != person.full_name and value in paragraph and value != qa["answers"][0]:
                    binding += 1
                    break
        assert binding >= 1, record["id"]


def test_test_only_phrasings_are_held_out(corpus):
    held_out = collections.Counter()
    for split, records in corpus.items():
        for record in records:
            texts = [(s, C.FACT_TEMPLATES) for p in record["context"].split("\n\n") for s in sentences(p)]
            texts += [(qa["question"], C.QUESTION_TEMPLATES) for qa in record["qa"]]
            for text, templates in texts:
                found = matching(text, templates)
                assert found, text
                for template in found:
                    held_out[split, templates is C.FACT_TEMPLATES, template.split] += 1
    for split in ("train", "validation"):
        assert held_out[split, True, "test_only"] == 0
        assert held_out[split, False, "test_only"] == 0
    assert held_out["test", True, "test_only"] > 100
    assert held_out["test", False, "test_only"] > 100
    assert held_out["test", True, "train"] > held_out["test", True, "test_only"]


def test_people_per_document_is_configurable(people):
    docs = C.make_documents(people[:200], seed=3, split="validation", num_docs=20, min_people=3, max_people=3)
    assert all(d["context"].count("\n\n") == 2 for d in docs)
    with pytest.raises(ValueError):
        C.make_documents(people[:200], seed=3, split="dev", num_docs=1)
    with pytest.raises(ValueError):
        C.make_documents(people[:200], seed=3, split="train", num_docs=1, min_people=0)


def test_bio_text_streams_varied_text_about_fixed_facts(people):
    person = people[0]
    rng = random.Random(0)
    bios = [C.bio_text(person, rng, "train") for _ in range(20)]
    assert len(set(bios)) > 15
    for bio in bios:
        assert person.full_name in sentences(bio)[0]
        assert all(person.attribute(a) in bio for a in C.ATTRIBUTES)
        assert not any(t.split == "test_only" for s in sentences(bio) for t in matching(s, C.FACT_TEMPLATES))
    stream = C.stream_bio_text(people[:100], seed=1, split="train")
    first = [next(stream) for _ in range(5)]
    assert first == list(itertools.islice(C.stream_bio_text(people[:100], seed=1, split="train"), 5))


# --- views ------------------------------------------------------------------------------------------------------


def test_distractors_add_text_and_keep_qa_answerable(corpus):
    train = corpus["train"]
    for record in train[:30]:
        padded = C.add_distractors(record, train, 3, random.Random(record["id"]))
        assert padded == C.add_distractors(record, train, 3, random.Random(record["id"]))
        assert padded["qa"] == record["qa"]
        assert len(padded["context"]) > len(record["context"])
        originals = record["context"].split("\n\n")
        paragraphs = padded["context"].split("\n\n")
        assert len(paragraphs) == len(originals) + 3
        assert [p for p in paragraphs if p in originals] == originals, "original bios kept, in order"
        firsts = [name.split()[0] for name in C.find_full_names(padded["context"])]
        assert len(firsts) == len(set(firsts)) == len(paragraphs), "every bio is a different first name"
        for qa in padded["qa"]:
            assert qa["answers"][0] in padded["context"]
    # Bare bio strings work as a pool too, and an exhausted pool is an error rather than a silent short pad.
    record = train[0]
    person_pool = [C.bio_text(p, random.Random(i), "train") for i, p in enumerate(C.make_people(40, seed=5))]
    assert C.add_distractors(record, person_pool, 2, random.Random(0))["context"].count("\n\n") == (
        record["context"].count("\n\n") + 2
    )
    with pytest.raises(ValueError):
        C.add_distractors(record, [record], 1, random.Random(0))


def test_to_single_qa(corpus):
    records = corpus["validation"][:10]
    single = C.to_single_qa(records)
    assert len(single) == sum(len(r["qa"]) for r in records)
    assert all(len(s["qa"]) == 1 and list(s) == ["id", "context", "qa"] for s in single)
    assert len({s["id"] for s in single}) == len(single)
    assert single[0]["context"] == records[0]["context"]
    assert single[0]["qa"][0] == records[0]["qa"][0]


# --- JSONL ------------------------------------------------------------------------------------------------------

GOOD = '{"id": "a", "context": "Abelin Ashgrove lives in Velmora.", "qa": [{"question": "q?", "answers": ["x"]}]}'


def test_jsonl_round_trip(corpus, tmp_path):
    path = tmp_path / "sub" / "test.jsonl"
    assert C.write_jsonl(corpus["test"], path) == len(corpus["test"])
    assert C.read_jsonl(path) == corpus["test"]
    weird = [{"id": "u", "context": "line\u2028separator and \u00e9", "qa": []}]
    C.write_jsonl(weird, path)
    assert C.read_jsonl(path) == weird


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('{"id": "b", "context": "c", "qa": [', "invalid JSON"),
        ('["not", "an", "object"]', "JSON object"),
        ('{"id": "b", "qa": []}', "context"),
        ('{"id": "b", "context": "c"}', "qa"),
        ('{"id": "b", "context": "c", "qa": [{"answers": ["x"]}]}', "question"),
        ('{"id": "b", "context": "c", "qa": [{"question": "q?"}]}', "answers"),
        ('{"id": "b", "context": "c", "qa": [{"question": "q?", "answers": "x"}]}', "answers"),
    ],
)
def test_read_jsonl_reports_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([GOOD, "", bad, GOOD]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"broken\.jsonl, line 3: .*{problem}"):
        C.read_jsonl(path)


def test_read_jsonl_can_skip_bad_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([GOOD, "{oops", GOOD, '{"context": "c"}', GOOD]) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        records = C.read_jsonl(path, skip_bad_lines=True)
    assert len(records) == 3
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "line 2" in messages[0] and "invalid JSON" in messages[0]
    assert "line 4" in messages[1] and "qa" in messages[1]
    assert all("\n" not in m and "mixed.jsonl" in m for m in messages)


def test_read_jsonl_empty_and_non_utf8(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        C.read_jsonl(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n  \n")
    with pytest.raises(ValueError, match="is empty"):
        C.read_jsonl(blank)
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(GOOD.replace("Velmora", "Vélmora").encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=r"latin1\.jsonl, line 1: not UTF-8 \(invalid byte at column \d+\)"):
        C.read_jsonl(latin)
    # one non-UTF-8 line among good ones is one skippable bad line
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(GOOD.encode() + b"\n" + GOOD.replace("Velmora", "V\xe9lmora").encode("latin-1") + b"\n"
                      + GOOD.encode() + b"\n")
    with pytest.warns(UserWarning, match=r"mixed\.jsonl, line 2: not UTF-8 .*; skipping the line"):
        assert len(C.read_jsonl(mixed, skip_bad_lines=True)) == 2


def test_generated_syllables_are_disjoint():
    assert not set(C.TRAIN_SYLLABLES) & set(C.FAMILY2_SYLLABLES)


def test_fresh_documents_are_new_people_with_answerable_questions():
    """The base model's reading curriculum: generated names (never the bundled lists), answers stated verbatim,
    train phrasings only, deterministic in the seed, and other people every time."""
    rng = random.Random("t")
    docs = [C.fresh_document(rng, max_people=2) for _ in range(30)]
    again = random.Random("t")
    assert docs == [C.fresh_document(again, max_people=2) for _ in range(30)]
    questions = {q["question"] for d in docs for q in d["qa"]}
    assert not any(first in q.split() for q in questions for first in C.FIRST_NAMES)
    held_out = [C.template_pattern(t.text) for t in C.QUESTION_TEMPLATES if t.split == "test_only"]
    for d in docs:
        assert 1 <= len(d["context"].split("\n\n")) <= 2
        for q in d["qa"]:
            assert q["answers"][0] in d["context"]
            assert not any(p.fullmatch(q["question"]) for p in held_out)
    only_generated_places = [d for d in docs if not any(c in d["context"] for c in C.CITIES)]
    assert only_generated_places


def test_family2_is_held_out_wording_and_syllables():
    """The second test family: one person per document by default, its own phrasings (none of the corpus's
    fact or question templates match), names built only from its own syllables."""
    docs = C.make_family2_documents(20, seed=3)
    assert docs == C.make_family2_documents(20, seed=3)
    fact_patterns = [C.template_pattern(t.text) for t in C.FACT_TEMPLATES]
    question_patterns = [C.template_pattern(t.text) for t in C.QUESTION_TEMPLATES]
    for d in docs:
        assert "\n\n" not in d["context"]
        for q in d["qa"]:
            assert q["answers"][0] in d["context"]
            assert not any(p.fullmatch(q["question"]) for p in question_patterns)
        for sentence in pipelines.SENTENCE_END.split(d["context"]):
            assert not any(p.fullmatch(sentence) for p in fact_patterns), sentence
    name = docs[0]["qa"][0]["question"]
    words = [w for w in name.rstrip("?").split() if w[0].isupper() and w not in ("What", "Which", "Where", "Who", "In")]
    assert words and all(_splits_into(w.lower(), C.FAMILY2_SYLLABLES) for w in words)
    with pytest.raises(ValueError, match="min_people"):
        C.make_family2_documents(2, min_people=3, max_people=2)


def _splits_into(word: str, syllables) -> bool:
    return word == "" or any(word.startswith(s) and _splits_into(word[len(s):], syllables) for s in syllables)


def test_broad_documents_never_use_family2_wording_or_syllables():
    """The broad reading curriculum keeps family2 held out: no broad word holds a family2 syllable, no broad
    sentence or question matches a family2 phrasing, no broad frame uses a family2 key word, and every answer is
    stated verbatim; the same rng state gives the same documents."""
    docs = [C.broad_document(random.Random(f"b{i}")) for i in range(40)]
    assert docs == [C.broad_document(random.Random(f"b{i}")) for i in range(40)]
    fact2 = [C.template_pattern(t.text) for t in C.FAMILY2_FACT_TEMPLATES]
    question2 = [C.template_pattern(t.text) for t in C.FAMILY2_QUESTION_TEMPLATES]
    family2_keys = ("native", "salary", "occupation", "line of work", "educated", "relax", "at present")
    frames = " ".join(C.BROAD_FACT_FRAMES + C.BROAD_QUESTION_FRAMES) + " ".join(
        n for nouns in C.BROAD_KEY_NOUNS.values() for n in nouns)
    assert not any(k in frames for k in family2_keys)
    invented = 0
    for d in docs:
        for q in d["qa"]:
            assert q["answers"][0] in d["context"]
            assert not any(p.fullmatch(q["question"]) for p in question2), q["question"]
            known = any(n in q["question"] for nouns in C.BROAD_KEY_NOUNS.values() for n in nouns)
            invented += not known
        for sentence in pipelines.SENTENCE_END.split(d["context"]):
            assert not any(p.fullmatch(sentence) for p in fact2), sentence
    assert invented > 0  # some keys are invented words: only the shared key ties question to statement
    rng = random.Random(5)
    for _ in range(300):
        word = C.broad_word(rng).lower()
        assert not any(s in word for s in C.FAMILY2_SYLLABLES), word


def test_relation_documents_tie_each_question_to_its_statement_by_one_invented_word():
    """Every question of a relation document shares its relation word with exactly one statement, which ends
    with the answer; nothing matches a family2 phrasing or holds a family2 syllable."""
    question2 = [C.template_pattern(t.text) for t in C.FAMILY2_QUESTION_TEMPLATES]
    for i in range(30):
        d = C.relation_document(random.Random(f"r{i}"))
        assert d == C.relation_document(random.Random(f"r{i}"))
        sentences = pipelines.SENTENCE_END.split(d["context"].replace("\n\n", " "))
        for q in d["qa"]:
            answer = q["answers"][0]
            name_words = {w for s in sentences for w in s.split() if w[:1].isupper()}
            shared = [s for s in sentences if set(q["question"].rstrip("?").replace("'s", "").split()) & (
                set(s.rstrip(".").replace("'s", "").replace(",", "").replace(":", "").split()) - name_words
                - {"is", "the", "of", "has", "a", "in", "at", "as", "with", "on", "from", "what", "For", "when"})]
            assert any(s.rstrip(".").endswith(answer) for s in shared), (q, sentences)
            assert not any(p.fullmatch(q["question"]) for p in question2)
