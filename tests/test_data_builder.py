"""The tfds/ArrayRecord builder of the biography corpus (read back with grain) and the small BPE tokenizer."""

from __future__ import annotations

import json
import os
import random
import time

import grain
import pytest

from shine_jax.data import corpus as C
from shine_jax.data import tfds_builder as B
from shine_jax.data import tokenizer as T
from tests.conftest import ws

SEED = 0
SMALL = dict(num_people=300, docs_per_split={"train": 200, "validation": 50, "test": 50})
SMALL_DOCS = SMALL["docs_per_split"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def reference():
    return C.build_corpus(seed=SEED, num_people=SMALL["num_people"], docs_per_split=SMALL_DOCS)


@pytest.fixture(scope="module")
def mqa(data_dir):
    return {split: list(B.load_split(data_dir, split, "mqa", **SMALL)) for split in C.SPLITS}


# --- builder ----------------------------------------------------------------------------------------------------


def test_prepares_array_record_and_reads_back_the_corpus(data_dir, mqa, reference):
    builder = B.prepare(data_dir, "mqa", **SMALL)
    assert builder.builder_config.name == "mqa-p300-tr200-va50-te50"
    files = sorted(os.listdir(builder.data_dir))
    for split in C.SPLITS:
        assert f"shine_bios-{split}.array_record-00000-of-00001" in files
        assert builder.info.splits[split].num_examples == SMALL_DOCS[split]
    assert not any(f.endswith(".tfrecord") or "tfrecord" in f for f in files)
    for split in C.SPLITS:
        assert mqa[split] == reference[split]  # same records, same order
    record = mqa["train"][0]
    assert list(record) == ["id", "context", "qa"] and list(record["qa"][0]) == ["question", "answers"]
    assert type(record["id"]) is str and type(record["context"]) is str
    assert all(type(q["question"]) is str and all(type(a) is str for a in q["answers"]) for q in record["qa"])


def test_read_split_equals_load_split(data_dir, mqa):
    assert B.read_split(data_dir, "validation", "mqa", **SMALL) == mqa["validation"]
    assert [r["id"] for r in B.read_split(data_dir, "train[:3]", "mqa", **SMALL)] == [
        r["id"] for r in mqa["train"][:3]]


def test_load_split_is_a_grain_map_dataset_with_random_access(data_dir, mqa):
    ds = B.load_split(data_dir, "validation", "mqa", **SMALL)
    assert isinstance(ds, grain.MapDataset)
    assert len(ds) == SMALL_DOCS["validation"]
    assert ds[7] == mqa["validation"][7]
    shuffled = list(ds.shuffle(seed=1))
    assert sorted(r["id"] for r in shuffled) == sorted(r["id"] for r in mqa["validation"])
    assert [r["id"] for r in B.load_split(data_dir, "train[:3]", "mqa", **SMALL)] == [
        r["id"] for r in mqa["train"][:3]
    ]


def test_prepare_is_idempotent_and_overrides_get_their_own_directory(data_dir, mqa):
    builder = B.prepare(data_dir, "mqa", **SMALL)
    path = os.path.join(builder.data_dir, "shine_bios-train.array_record-00000-of-00001")
    mtime = os.stat(path).st_mtime_ns
    start = time.perf_counter()
    again = B.prepare(data_dir, "mqa", **SMALL)
    assert time.perf_counter() - start < 1.0
    assert again.data_dir == builder.data_dir and os.stat(path).st_mtime_ns == mtime  # reused, not rewritten
    # The same settings spelled differently map to the same config; different settings to another directory.
    same = B.make_config("mqa", num_people=300, train_docs=200, validation_docs=50, test_docs=50, seed=SEED)
    assert same.name == builder.builder_config.name
    assert B.make_config("mqa") is B.make_config("mqa", seed=0)  # no effective override: the built-in config
    other = B.prepare(data_dir, "mqa", **dict(SMALL, docs_per_split={"train": 20, "validation": 5, "test": 5}))
    assert other.data_dir != builder.data_dir
    assert other.info.splits["train"].num_examples == 20
    assert [r["id"] for r in B.load_split(data_dir, "train", "mqa", **dict(SMALL, docs_per_split={
        "train": 20, "validation": 5, "test": 5}))] == [r["id"] for r in mqa["train"][:20]]
    assert len(list(B.load_split(data_dir, "train", "mqa", **SMALL))) == 200  # the first one is untouched


def test_bad_configs_are_rejected_early(data_dir):
    with pytest.raises(ValueError, match="unknown config"):
        B.make_config("nope")
    with pytest.raises(TypeError, match="unknown config fields"):
        B.make_config("mqa", num_docs=3)
    with pytest.raises(ValueError, match="min_people <= max_people"):
        B.make_config("mqa", min_people=3, max_people=2)
    with pytest.raises(ValueError, match="fewer than max_people"):
        B.make_config("mqa", num_people=20)
    with pytest.raises(ValueError, match="built-in name"):
        B.make_config(B.ShineBiosConfig(name="mqa", num_people=300))


def test_splits_are_disjoint_by_person(mqa):
    people = {split: {n for r in records for n in C.find_full_names(r["context"])} for split, records in mqa.items()}
    assert all(people.values())
    assert not people["train"] & people["validation"]
    assert not people["train"] & people["test"]
    assert not people["validation"] & people["test"]


def test_generation_is_deterministic(tmp_path, mqa):
    # A fresh directory, so the split is generated again rather than reused.
    again = list(B.load_split(tmp_path, "test", "mqa", **SMALL))
    assert again == mqa["test"]
    other_seed = list(B.load_split(tmp_path, "test", "mqa", **dict(SMALL, seed=1)))
    assert [r["context"] for r in other_seed] != [r["context"] for r in mqa["test"]]


def test_distractor_config_pads_contexts_and_keeps_qa(data_dir, mqa):
    padded = {split: list(B.load_split(data_dir, split, "mqa_distractors", **SMALL)) for split in ("train", "test")}
    for split, records in padded.items():
        base = mqa[split]
        assert len(records) == len(base)
        for plain, record in zip(base, records):
            assert record["id"] == plain["id"] + "+d2"
            assert record["qa"] == plain["qa"]
            assert len(record["context"]) > len(plain["context"])
            paragraphs = record["context"].split("\n\n")
            assert len(paragraphs) == len(plain["context"].split("\n\n")) + 2
            assert all(p in paragraphs for p in plain["context"].split("\n\n"))
    # Distractor bios come from the same split only.
    train_people = {n for r in mqa["train"] for n in C.find_full_names(r["context"])}
    test_people = {n for r in padded["test"] for n in C.find_full_names(r["context"])}
    assert not train_people & test_people
    # Exactly corpus.add_distractors over the split's own documents.
    rng = random.Random(f"{SEED}/test/distractors")
    assert padded["test"] == [C.add_distractors(r, mqa["test"], 2, rng) for r in mqa["test"]]


def test_single_person_config(data_dir):
    records = list(B.load_split(data_dir, "validation", "single_person", **SMALL))
    assert len(records) == SMALL_DOCS["validation"]
    assert all(len(C.find_full_names(r["context"])) == 1 and "\n\n" not in r["context"] for r in records)


def test_empty_split_loads_as_empty(tmp_path):
    overrides = dict(num_people=300, docs_per_split={"train": 10, "validation": 0, "test": 3})
    assert len(B.load_split(tmp_path, "validation", "mqa", **overrides)) == 0
    assert len(B.load_split(tmp_path, "test", "mqa", **overrides)) == 3
    assert B.read_split(tmp_path, "validation", "mqa", **overrides) == []
    assert len(B.read_split(tmp_path, "test", "mqa", **overrides)) == 3


def test_encoding_is_lossless():
    record = {"id": "x", "context": "a\u2028b \U0001f642", "qa": [
        {"question": "q1?", "answers": ["a", "b, \"c\"", ""]}, {"question": "", "answers": []}]}
    example = B.encode_record(record)
    stored = {k: (v.encode() if isinstance(v, str) else [s.encode() for s in v]) for k, v in example.items()}
    assert B.decode_example(stored) == record


# --- user JSONL -------------------------------------------------------------------------------------------------


def test_records_from_jsonl(tmp_path, reference):
    good = reference["validation"][:3]
    path = tmp_path / "user.jsonl"
    C.write_jsonl(good, path)
    ds = B.records_from_jsonl(path)
    assert isinstance(ds, grain.MapDataset) and list(ds) == good

    lines = [json.dumps(good[0]), "{not json", json.dumps({"context": "c", "qa": [{"question": 1}]}),
             json.dumps({"context": "no id here", "qa": []})]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: invalid JSON"):
        B.records_from_jsonl(bad)
    with pytest.warns(UserWarning) as caught:
        ds = B.records_from_jsonl(bad, skip_bad_lines=True)
    messages = [str(w.message) for w in caught]
    assert any("line 2" in m for m in messages) and any("line 3" in m for m in messages)
    records = list(ds)
    assert [r["id"] for r in records] == [good[0]["id"], "bad-000001"]  # a missing id is filled in


# --- tokenizer --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, reference):
    out = tmp_path_factory.mktemp("tok")
    return T.train_bpe_tokenizer(T.corpus_training_texts(reference["train"]), 600, out), out


def test_tokenizer_files_and_special_tokens(tokenizer):
    from transformers import AutoTokenizer

    tok, out = tokenizer
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    loaded = AutoTokenizer.from_pretrained(out)
    assert len(loaded) == len(tok) == 600
    assert loaded.convert_ids_to_tokens(list(range(6))) == list(T.SPECIAL_TOKENS)
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert (loaded.pad_token_id, loaded.eos_token_id) == (0, 2)
    for i, token in enumerate(T.SPECIAL_TOKENS):
        assert loaded(token, add_special_tokens=False)["input_ids"] == [i]
        # Never split or merged with neighbouring text.
        assert loaded(f"x{token}y", add_special_tokens=False)["input_ids"] == [
            *loaded("x", add_special_tokens=False)["input_ids"], i, *loaded("y", add_special_tokens=False)["input_ids"]]
    assert not any("<|" in t and t not in T.SPECIAL_TOKENS for t in loaded.get_vocab())  # no merges across them
    assert loaded("Hello there")["input_ids"] == loaded("Hello there", add_special_tokens=False)["input_ids"]
    # What shine.with_shine_tokens does: the vocabulary and the ids stay as they are.
    loaded.add_tokens(list(T.SHINE_TOKENS))
    assert len(loaded) == 600 and loaded.convert_tokens_to_ids(list(T.SHINE_TOKENS)) == [3, 4, 5]


def test_tokenizer_round_trip(tokenizer, reference):
    tok, _ = tokenizer
    texts = [r["context"] for r in reference["test"][:20]]
    texts += [T.render_qa_turn(q["question"], q["answers"][0]) for r in reference["test"][:5] for q in r["qa"]]
    texts += ["", "  two  spaces ", "tab\tCRLF\r\n\n\n", "naïve café 東京 🙂 \u2028\u00a0", "<|im_start", "<< || >>"]
    for text in texts:  # words survive exactly; whitespace comes back as single spaces (newlines kept)
        decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"])
        assert ws(decoded) == ws(text)
        assert decoded.count("\n") >= (text.count("\n") > 0)


def test_a_value_has_the_same_tokens_everywhere(tokenizer):
    """Copying a value from the document into an answer is the identity on token ids (no space-less variant)."""
    tok, _ = tokenizer
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    value = ids("Kestrel Bay")
    for text in ("She lives in Kestrel Bay.", "Kestrel Bay is home.", "x\n\nKestrel Bay",
                 T.render_qa_turn("Where does she live?", "Kestrel Bay")):
        got = ids(text)
        assert any(got[i:i + len(value)] == value for i in range(len(got))), text


def test_tokenizer_is_deterministic(tmp_path, tokenizer, reference):
    _, out = tokenizer
    T.train_bpe_tokenizer(T.corpus_training_texts(reference["train"]), 600, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_chat_template_renders_shine_training_format(tokenizer):
    tok, _ = tokenizer
    question, answer = "Where does Verena Holloway live?", "Kestrel Bay"
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    expected = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    assert tok.apply_chat_template(messages, tokenize=False) == expected == T.render_qa_turn(question, answer)
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == (
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    # The answer's tokens do not depend on what precedes it in the turn (labels can be located by tokenizing it).
    ids = tok(expected, add_special_tokens=False)["input_ids"]
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert ids[-2 - len(answer_ids):-2] == answer_ids and ids[-2:] == [tok.eos_token_id, *tok("\n")["input_ids"]]


def test_names_tokenize_consistently_in_running_text(tokenizer):
    tok, _ = tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    for name in ("Verena Holloway", "Abelin Ashgrove", "Zephyrin Esterbrook"):
        spaced = ids(" " + name)
        for text in (f"Yes. {name} was born.", f"Where does {name} live?", f"In 1990, {name} moved."):
            sequence = ids(text)
            assert any(sequence[i:i + len(spaced)] == spaced for i in range(len(sequence)))


def test_left_padding(tokenizer):
    tok, _ = tokenizer
    assert tok.padding_side == "left"
    batch = tok(["a b", "Verena Holloway lives in Kestrel Bay"], padding=True, add_special_tokens=False)
    short, long = batch["input_ids"]
    n = len(tok("a b", add_special_tokens=False)["input_ids"])
    assert len(short) == len(long) and short[:len(short) - n] == [tok.pad_token_id] * (len(short) - n)
    assert batch["attention_mask"][0] == [0] * (len(short) - n) + [1] * n


def test_tiny_tokenizer_is_cached(tmp_path):
    tok = T.tiny_tokenizer(tmp_path, vocab_size=512, num_docs=150)
    path = os.path.join(T.tiny_tokenizer_dir(tmp_path, 512), "tokenizer.json")
    mtime = os.stat(path).st_mtime_ns
    again = T.tiny_tokenizer(tmp_path, vocab_size=512, num_docs=150)
    assert os.stat(path).st_mtime_ns == mtime and again.get_vocab() == tok.get_vocab()
    for word in ("user", "assistant"):  # chat role words are in the training text
        assert len(tok(word, add_special_tokens=False)["input_ids"]) <= 2


def test_a_failed_tokenizer_rebuild_keeps_the_old_cache(tmp_path, monkeypatch):
    """A cache from other settings is rebuilt in a scratch folder: a crash mid-training leaves the old cache whole
    and no scratch folder behind."""
    T.tiny_tokenizer(tmp_path, vocab_size=512, num_docs=150)
    folder = T.tiny_tokenizer_dir(tmp_path, 512)
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}

    def crash(texts, vocab_size, out):
        open(os.path.join(out, "tokenizer.json"), "w").write("{half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(T, "train_bpe_tokenizer", crash)
    with pytest.raises(OSError, match="No space left"):
        T.tiny_tokenizer(tmp_path, vocab_size=512, num_docs=160)  # other settings: rebuilt
    assert {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)} == before
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)]
