"""``shine-jax data import``: every public format from every container (JSON, JSON Lines, parquet) into the
project's JSON Lines, squad-n's official grouping rule, bad rows, wrong formats, streaming and atomic output."""

from __future__ import annotations

import json
import math
import random
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shine_jax import cli
from shine_jax.data import importers, sources
from shine_jax.data.corpus import read_jsonl
from shine_jax.errors import InputError

CONTAINERS = ["json", "jsonl", "parquet"]


def write_rows(path, rows, row_group_size=None):
    """``rows`` as ``path``'s container: a JSON list (indented, as the official files), JSON Lines or parquet."""
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def run_import(tmp_path, name, rows, container, **kw):
    src = write_rows(tmp_path / f"in.{container}", rows)
    out = tmp_path / "out.jsonl"
    warnings = []
    summary = importers.import_files(name, [str(src)], out, progress=False, warn=warnings.append, **kw)
    return [json.loads(line) for line in out.read_text().splitlines()], summary, warnings


def turn(role, content):
    return {"role": role, "content": content}


# one sample per format: (rows in the source schema, the documents expected, questions left out on purpose)
SAMPLES = {
    "shine-ift": (
        [{"contextlen": 9, "conversationlen": 30, "context": " Ada was born in Lyon in 1901. ",
          "conversations": [turn("user", "Where was Ada born?"), turn("assistant", " Lyon"),
                            turn("user", "When?"), turn("assistant", "1901")]},
         {"contextlen": 4, "conversationlen": 12, "context": "Bo sells kites.",
          "conversations": [turn("user", "What does Bo sell?"), turn("assistant", "kites")]}],
        [{"id": "shine-ift-0000001", "context": "Ada was born in Lyon in 1901.",
          "qa": [{"question": "Where was Ada born?", "answers": ["Lyon"]}, {"question": "When?", "answers": ["1901"]}]},
         {"id": "shine-ift-0000002", "context": "Bo sells kites.",
          "qa": [{"question": "What does Bo sell?", "answers": ["kites"]}]}],
        {}),
    "shine-c1qa": (
        [{"contextlen": 4, "conversationlen": 12, "context": "Cy paints boats.",
          "conversations": [turn("user", "What does Cy paint?"), turn("assistant", "boats")]},
         {"contextlen": 4, "conversationlen": 12, "context": "Di owns a mill.",
          "conversations": [turn("user", "What does Di own?"), turn("assistant", "a mill")]}],
        [{"id": "shine-c1qa-0000001", "context": "Cy paints boats.",
          "qa": [{"question": "What does Cy paint?", "answers": ["boats"]}]},
         {"id": "shine-c1qa-0000002", "context": "Di owns a mill.",
          "qa": [{"question": "What does Di own?", "answers": ["a mill"]}]}],
        {}),
    "msmarco-mqa": (
        [{"id": "m7", "context": "Ed runs. Ed swims.",
          "conversations": [{"question": "Does Ed run?", "answer": "yes"}, {"question": "And swim?", "answer": "yes"}]},
         {"id": "m8", "context": "Fay sings.", "conversations": [{"question": "Who sings?", "answer": "Fay"}]}],
        [{"id": "m7", "context": "Ed runs. Ed swims.",
          "qa": [{"question": "Does Ed run?", "answers": ["yes"]}, {"question": "And swim?", "answers": ["yes"]}]},
         {"id": "m8", "context": "Fay sings.", "qa": [{"question": "Who sings?", "answers": ["Fay"]}]}],
        {}),
    "squad": (  # HF rows: two questions on one context become one document; all distinct golds kept
        [{"id": "s1", "title": "T", "context": "Gil built a bridge in 1850.", "question": "What did Gil build?",
          "answers": {"text": ["a bridge", "bridge", "a bridge"], "answer_start": [10, 12, 10]}},
         {"id": "s2", "title": "T", "context": "Gil built a bridge in 1850.", "question": "When?",
          "answers": {"text": ["1850"], "answer_start": [22]}},
         {"id": "s3", "title": "U", "context": "Hal plays oboe.", "question": "Which instrument?",
          "answers": {"text": ["oboe"], "answer_start": [10]}},
         {"id": "s4", "title": "U", "context": "Hal plays oboe.", "question": "Unanswerable?",
          "answers": {"text": [], "answer_start": []}}],
        [{"id": "s1", "context": "Gil built a bridge in 1850.",
          "qa": [{"question": "What did Gil build?", "answers": ["a bridge", "bridge"]},
                 {"question": "When?", "answers": ["1850"]}]},
         {"id": "s3", "context": "Hal plays oboe.", "qa": [{"question": "Which instrument?", "answers": ["oboe"]}]}],
        {"SQuAD questions without an answer (SQuAD 2.0 unanswerable)": 1}),
    "hotpotqa": (  # HF distractor rows; HotpotQA sentences carry their own leading space
        [{"id": "h1", "question": "Where did Ivy's brother live?", "answer": "Oslo", "type": "bridge",
          "level": "hard", "supporting_facts": {"title": ["Ivy"], "sent_id": [0]},
          "context": {"title": ["Ivy", "Jon"], "sentences": [["Ivy has a brother, Jon.", " She is a cook."],
                                                            ["Jon lived in Oslo."]]}},
         {"id": "h2", "question": "Who cooks?", "answer": "Ivy", "type": "bridge", "level": "easy",
          "supporting_facts": {"title": ["Ivy"], "sent_id": [1]},
          "context": {"title": ["Ivy"], "sentences": [["Ivy has a brother, Jon.", " She is a cook."]]}}],
        [{"id": "h1", "context": "Ivy has a brother, Jon. She is a cook.\n\nJon lived in Oslo.",
          "qa": [{"question": "Where did Ivy's brother live?", "answers": ["Oslo"]}]},
         {"id": "h2", "context": "Ivy has a brother, Jon. She is a cook.",
          "qa": [{"question": "Who cooks?", "answers": ["Ivy"]}]}],
        {}),
    "musique": (
        [{"id": "2hop__1_2", "question": "Who married the Green performer?", "answer": "Mia Kay",
          "answer_aliases": ["M. Kay"], "answerable": True,
          "question_decomposition": [{"id": 1, "question": "Green >> performer", "answer": "Sam",
                                      "paragraph_support_idx": 1}],
          "paragraphs": [{"idx": 0, "title": "X", "paragraph_text": "Unrelated text.", "is_supporting": False},
                         {"idx": 1, "title": "Green", "paragraph_text": "Green is by Sam.", "is_supporting": True},
                         {"idx": 2, "title": "Sam", "paragraph_text": "Sam married Mia Kay.",
                          "is_supporting": True}]},
         {"id": "2hop__3_4", "question": "Unanswerable one?", "answer": "Z", "answer_aliases": [],
          "answerable": False, "question_decomposition": [],
          "paragraphs": [{"idx": 0, "title": "Q", "paragraph_text": "Nothing here.", "is_supporting": False}]}],
        [{"id": "2hop__1_2", "context": "Unrelated text.\n\nGreen is by Sam.\n\nSam married Mia Kay.",
          "qa": [{"question": "Who married the Green performer?", "answers": ["Mia Kay", "M. Kay"]}]}],
        {"MuSiQue questions marked unanswerable": 1}),
    "2wiki": (  # HF dict form; 2Wiki sentences have no leading space
        [{"_id": "w1", "type": "comparison", "question": "Who is older, Kim or Lee?", "answer": "Kim",
          "supporting_facts": {"title": ["Kim", "Lee"], "sent_id": [0, 0]},
          "context": {"title": ["Kim", "Lee"], "sentences": [["Kim was born in 1950.", "Kim is a poet."],
                                                            ["Lee was born in 1960."]]}}],
        [{"id": "w1", "context": "Kim was born in 1950. Kim is a poet.\n\nLee was born in 1960.",
          "qa": [{"question": "Who is older, Kim or Lee?", "answers": ["Kim"]}]}],
        {}),
    "msmarco": (
        [{"answers": ["about 40 minutes"], "query": "how long to boil beets", "query_id": 1102, "query_type": "NUM",
          "passages": {"is_selected": [0, 1], "passage_text": ["Beets are red.", "Boil beets about 40 minutes."],
                       "url": ["http://a", "http://b"]},
          "wellFormedAnswers": ["Boil beets for about 40 minutes."]},
         {"answers": ["No Answer Present."], "query": "what is x", "query_id": 1103, "query_type": "DESC",
          "passages": {"is_selected": [0], "passage_text": ["Y is y."], "url": ["http://c"]},
          "wellFormedAnswers": []}],
        [{"id": "1102", "context": "Beets are red.\n\nBoil beets about 40 minutes.",
          "qa": [{"question": "how long to boil beets", "answers": ["about 40 minutes"]}]}],
        {"MS MARCO queries without an answer (no selected passage or 'No Answer Present.')": 1}),
}


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_format_from_each_container(tmp_path, name, container):
    rows, expected, left_out = SAMPLES[name]
    docs, summary, warnings = run_import(tmp_path, name, rows, container)
    assert docs == expected
    assert warnings == [] and summary.bad_rows == 0
    assert dict(summary.left_out) == left_out
    assert (summary.rows, summary.records) == (len(rows), len(expected))
    assert summary.questions == sum(len(d["qa"]) for d in expected)


def test_original_json_shapes(tmp_path):
    """SQuAD's original {"data": [articles]} file and 2Wiki's / HotpotQA's [[title, [sentences]], ...] contexts."""
    squad = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "Gil built a bridge.", "qas": [
            {"id": "a1", "question": "What did Gil build?", "answers": [{"text": "a bridge", "answer_start": 10}]},
            {"id": "a2", "question": "Gone?", "answers": [], "is_impossible": True}]},
        {"context": "Hal plays oboe.", "qas": [
            {"id": "a3", "question": "Which?", "answers": [{"text": "oboe", "answer_start": 10}]}]}]}]}
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    summary = importers.import_files("squad", [str(tmp_path / "squad.json")], tmp_path / "s.jsonl", progress=False)
    assert [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()] == [
        {"id": "a1", "context": "Gil built a bridge.", "qa": [{"question": "What did Gil build?",
                                                              "answers": ["a bridge"]}]},
        {"id": "a3", "context": "Hal plays oboe.", "qa": [{"question": "Which?", "answers": ["oboe"]}]}]
    assert sum(summary.left_out.values()) == 1

    wiki = [{"_id": "w9", "question": "Q?", "answer": "A",
             "context": [["Kim", ["Kim is A.", "Kim sings."]], ["Lee", [" Lee is B."]]]}]
    docs, _, _ = run_import(tmp_path, "2wiki", wiki, "json")
    assert docs == [{"id": "w9", "context": "Kim is A. Kim sings.\n\nLee is B.",
                     "qa": [{"question": "Q?", "answers": ["A"]}]}]


# ------------------------------------------------------------------------------------------------ squad-n
def squad_rows(n_contexts=40, seed=0):
    rng = random.Random(seed)
    rows = []
    for c in range(n_contexts):
        context = " ".join(f"w{c}x{i}" for i in range(rng.randint(20, 80))) + "."
        for q in range(rng.randint(1, 3)):
            rows.append({"id": f"c{c}q{q}", "title": "T", "context": context, "question": f"Q{q} about {c}?",
                         "answers": {"text": [f"w{c}x{q}"], "answer_start": [0]}})
    return rows


def official_groups(contexts, count, pad_tokens, seed):
    """The official GroupedSquadDataset.shuffle, written out with its own calls (global random, numpy)."""
    contexts = list(contexts)
    num_groups = (count(importers.SEP.join(contexts)) + pad_tokens - 1) // pad_tokens
    random.seed(seed)
    random.shuffle(contexts)
    return [[str(s) for s in arr] for arr in np.array_split(contexts, num_groups)]


def test_squad_n_pads_each_context_with_other_contexts_by_the_official_rule(tmp_path):
    rows, pad = squad_rows(), 300
    docs, summary, _ = run_import(tmp_path, "squad-n", rows, "jsonl", pad_tokens=pad, seed=7)
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    questions = {c: [r["question"] for r in rows if r["context"] == c] for c in contexts}
    assert len(docs) == len(contexts) and summary.questions == len(rows)
    groups, positions = set(), []
    for doc in docs:
        passages = doc["context"].split(importers.SEP)
        gold = [c for c in contexts if questions[c] == [q["question"] for q in doc["qa"]]]
        assert len(gold) == 1 and passages.count(gold[0]) == 1  # the gold context is there, whole, once
        assert set(passages) <= set(contexts) and len(set(passages)) == len(passages)  # distractors: other contexts
        assert len(passages) > 1  # padding happened
        positions.append(passages.index(gold[0]))
        groups.add(frozenset(passages))
    assert len(set(positions)) > 2  # the gold's place is drawn, not fixed
    # the groups are exactly the official partition, and hold pad tokens on average
    expected = official_groups(contexts, importers.whitespace_count, pad, seed=7)
    assert groups == {frozenset(g) for g in expected}
    lengths = [importers.whitespace_count(importers.SEP.join(g)) for g in expected]
    assert 0.8 * pad <= sum(lengths) / len(lengths) <= pad
    assert "groups of 300 tokens on average" in summary.notes[0]
    # deterministic given --seed, another seed groups otherwise
    again, _, _ = run_import(tmp_path, "squad-n", rows, "jsonl", pad_tokens=pad, seed=7)
    other, _, _ = run_import(tmp_path, "squad-n", rows, "jsonl", pad_tokens=pad, seed=8)
    assert again == docs and other != docs


def test_squad_n_counts_with_the_tokenizer_folder(tmp_path, monkeypatch):
    """--tokenizer loads an HF tokenizer from the folder, local files only (a stand-in counting characters here:
    importing transformers would cost seconds)."""
    loaded = {}

    class CharTokenizer:
        model_max_length = 512

        @classmethod
        def from_pretrained(cls, path, **kw):
            loaded.update(path=path, **kw)
            return cls()

        def __call__(self, text):
            return {"input_ids": list(text)}

    monkeypatch.setitem(__import__("sys").modules, "transformers", types.SimpleNamespace(AutoTokenizer=CharTokenizer))
    rows, pad = squad_rows(12), 900
    docs, _, _ = run_import(tmp_path, "squad-n", rows, "jsonl", pad_tokens=pad, tokenizer=str(tmp_path))
    assert loaded == {"path": str(tmp_path), "local_files_only": True}
    contexts = list(dict.fromkeys(r["context"] for r in rows))
    total = len(importers.SEP.join(contexts))
    assert len({frozenset(d["context"].split(importers.SEP)) for d in docs}) == math.ceil(total / pad)
    with pytest.raises(InputError, match="no such folder"):
        run_import(tmp_path, "squad-n", rows, "jsonl", pad_tokens=pad, tokenizer=str(tmp_path / "missing"))


def test_squad_n_needs_pad_tokens_and_others_refuse_them(tmp_path):
    with pytest.raises(InputError, match="needs --pad-tokens"):
        run_import(tmp_path, "squad-n", squad_rows(2), "jsonl")
    with pytest.raises(InputError, match="only apply to --format squad-n"):
        run_import(tmp_path, "squad", squad_rows(2), "jsonl", pad_tokens=512)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_rows_are_skipped_with_a_numbered_warning_and_counted(tmp_path, capsys):
    good = SAMPLES["squad"][0][2]
    lines = [json.dumps(good), "{not json", json.dumps(dict(good, context=None)),
             json.dumps(dict(good, id="x2", answers="oboe")), json.dumps(SAMPLES["hotpotqa"][0][0]), "[1, 2]", "",
             json.dumps(dict(good, id="x3", question="Second question?"))]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "import", "--format", "squad", "--input", str(src), "--out", str(out),
                     "--no-progress"]) == 0
    captured = capsys.readouterr()
    warnings = captured.err.strip().splitlines()
    assert [w.split(": ", 2)[1] for w in warnings] == [f"{src}, line {n}" for n in (2, 3, 4, 5, 6)]
    assert "invalid JSON" in warnings[0] and "'context' is missing" in warnings[1]
    assert "'answers'" in warnings[2] and "not titled" not in warnings[3] and "expected an object" in warnings[4]
    assert all(w.startswith("warning: ") and w.endswith("skipping the row") for w in warnings)
    assert "wrote" in captured.out and "1 documents, 2 questions from 7 rows" in captured.out
    assert "skipped 5 bad rows" in captured.out
    assert read_jsonl(out)[0]["qa"][1]["question"] == "Second question?"


@pytest.mark.parametrize("container, where", [("json", "item 2 (line 32)"), ("parquet", "row 2")])
def test_bad_rows_of_json_and_parquet_name_their_item_or_row(tmp_path, container, where):
    rows = [SAMPLES["hotpotqa"][0][0], dict(SAMPLES["hotpotqa"][0][0], question=""), SAMPLES["hotpotqa"][0][1]]
    docs, summary, warnings = run_import(tmp_path, "hotpotqa", rows, container)
    assert [d["id"] for d in docs] == ["h1", "h2"] and summary.bad_rows == 1
    assert warnings == [f"{tmp_path / f'in.{container}'}, {where}: a question is empty; skipping the row"]


@pytest.mark.parametrize("n_rows", [3, importers.PROBE_ROWS + 5])
def test_a_file_of_another_format_is_one_error_line(tmp_path, capsys, n_rows):
    rows = (SAMPLES["squad"][0] * 10)[:n_rows]
    src = write_rows(tmp_path / "squad.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "import", "--format", "msmarco", "--input", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {src} is not msmarco input")
    assert "fields answers, context, id, question, title" in err[0] and "looks like squad" in err[0]
    assert ("all 3 of its rows" if n_rows == 3 else f"first {importers.PROBE_ROWS} rows") in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_turns_of_the_other_conversation_format_are_named(tmp_path, capsys):
    src = write_rows(tmp_path / "mqa.jsonl", SAMPLES["msmarco-mqa"][0])
    assert cli.main(["data", "import", "--format", "shine-ift", "--input", str(src), "--out",
                     str(tmp_path / "o.jsonl")]) == 2
    assert "({question, answer} turns are msmarco-mqa)" in capsys.readouterr().err


@pytest.mark.parametrize("pattern, message", [("*.parquet", "matches no file"), ("missing.jsonl", "no such file"),
                                              ("data.csv", "unknown input type '.csv'")])
def test_inputs_that_name_no_readable_file_are_errors(tmp_path, capsys, pattern, message):
    (tmp_path / "data.csv").write_text("a,b\n")
    assert cli.main(["data", "import", "--format", "squad", "--input", str(tmp_path / pattern), "--out",
                     str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_globs_and_repeated_inputs_are_read_in_order(tmp_path):
    rows = SAMPLES["shine-c1qa"][0]
    write_rows(tmp_path / "b.jsonl", rows[1:])
    write_rows(tmp_path / "a.parquet", rows[:1])
    out = tmp_path / "o.jsonl"
    importers.import_files("shine-c1qa", [str(tmp_path / "*.parquet"), str(tmp_path / "*.jsonl")], out,
                           progress=False)
    assert [r["context"] for r in read_jsonl(out)] == ["Cy paints boats.", "Di owns a mill."]


# ------------------------------------------------------------------------------------------------ streaming
def test_parquet_is_read_in_record_batches(tmp_path, monkeypatch):
    rows = SAMPLES["squad"][0][:3] * 3
    rows = [dict(r, id=f"r{i}", question=f"{r['question']} {i}") for i, r in enumerate(rows[:7])]
    src = write_rows(tmp_path / "in.parquet", rows, row_group_size=2)
    assert pq.ParquetFile(src).metadata.num_row_groups == 4
    batches = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kw):
        for batch in real(self, *args, **kw):
            batches.append(batch.num_rows)
            yield batch

    def whole(*args, **kw):
        raise AssertionError("the parquet file was read whole")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 2)
    out = tmp_path / "o.jsonl"
    summary = importers.import_files("squad", [str(src)], out, progress=False)
    assert batches == [2, 2, 2, 1] and summary.rows == 7 and summary.questions == 7


def test_a_json_list_is_decoded_item_by_item_in_small_chunks(tmp_path, monkeypatch):
    items = [{"a": i, "text": "x\ny " * (i % 5), "nested": [1, {"b": [2, 3]}]} for i in range(200)]
    items += [12345678, "a string", [1, 2], None, True]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(items, indent=1))
    sizes = []
    real_fill = sources.JsonItems.fill

    def fill(self, at_least=0):
        more = real_fill(self, at_least)
        sizes.append(len(self.buf))
        return more

    monkeypatch.setattr(sources, "JSON_CHUNK_CHARS", 64)
    monkeypatch.setattr(sources.JsonItems, "fill", fill)
    got = list(sources.iter_json(path))
    assert [v for _, v in got] == items
    assert max(sizes) < 400 < path.stat().st_size / 50  # never more than a few items in memory
    lines = path.read_text().splitlines()
    for where, value in got[:50]:  # each item's reported line is where it starts
        line = int(where.rsplit("line ", 1)[1].rstrip(")"))
        assert lines[line - 1].strip() in ("{", json.dumps(value)), where


def test_json_objects_holding_lists_and_broken_json(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"version": "1.1", "meta": {"n": [1]}, "data": [{"a": 1}, {"a": 2}], "x": 3.5}))
    assert [(w.split(", ", 1)[1], v) for w, v in sources.iter_json(path)] == [
        ("'data' item 1 (line 1)", {"a": 1}), ("'data' item 2 (line 1)", {"a": 2})]
    path.write_text('[{"a": 1}, {"a": 2')
    with pytest.raises(InputError, match="invalid JSON at line 1"):
        list(sources.iter_json(path))
    path.write_text('{"columns": {"0": "a"}}')
    with pytest.raises(InputError, match="no list of records"):
        list(sources.iter_json(path))
    path.write_text('"just text"')
    with pytest.raises(InputError, match="must hold a list of records"):
        list(sources.iter_json(path))


# ------------------------------------------------------------------------------------------------ output
def test_output_is_replaced_only_when_complete(tmp_path, monkeypatch):
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")
    good = write_rows(tmp_path / "good.jsonl", SAMPLES["squad"][0])
    wrong = write_rows(tmp_path / "wrong.jsonl", SAMPLES["msmarco"][0])
    with pytest.raises(InputError, match="is not squad input"):
        importers.import_files("squad", [str(good), str(wrong)], out, progress=False)
    assert out.read_text() == "previous\n"

    def interrupted(row):
        raise KeyboardInterrupt

    monkeypatch.setitem(importers.FORMATS, "shine-ift", importers.Format(interrupted, "context"))
    with pytest.raises(KeyboardInterrupt):
        importers.import_files("shine-ift", [str(good)], out, progress=False)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.jsonl", "out.jsonl", "wrong.jsonl"]


def test_the_imported_file_is_what_eval_reads(tmp_path):
    for name, (rows, expected, _) in SAMPLES.items():
        out = tmp_path / f"{name}.jsonl"
        importers.import_files(name, [str(write_rows(tmp_path / f"{name}.parquet", rows))], out, progress=False)
        assert read_jsonl(out) == expected  # the reader of eval --data, strict mode: no line refused


def test_help_names_every_format_and_the_length_measure(capsys):
    with pytest.raises(SystemExit):
        cli.main(["data", "import", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in importers.FORMATS) and "whitespace" in text


@pytest.mark.parametrize("name", ["shine-ift", "msmarco-mqa"])
def test_a_row_with_an_empty_conversation_is_skipped_with_a_warning(tmp_path, name):
    good = SAMPLES[name][0]
    rows = [good[0], dict(good[1], conversations=[]), good[1]]
    docs, summary, warnings = run_import(tmp_path, name, rows, "jsonl")
    assert len(docs) == 2 and summary.bad_rows == 1
    assert len(warnings) == 1 and warnings[0].startswith(f"{tmp_path / 'in.jsonl'}, line 2: ")
    assert "empty" in warnings[0] and warnings[0].endswith("skipping the row")
