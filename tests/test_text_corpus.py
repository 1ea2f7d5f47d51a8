"""SHINE pretraining on text shards: packing, exact resume, per-host shards, bad input, one training run."""

import json

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shine_jax.base_model import load_tokenizer_from
from shine_jax.data.pipelines import pretrain_example
from shine_jax.data.prompts import SEP
from shine_jax.data.text_corpus import PackedTextDataset, iter_texts
from shine_jax.errors import InputError
from tests.conftest import REPO

TOK = load_tokenizer_from(REPO / "models" / "tiny_base")


def data_cfg(context_length=48, conversation_length=64):
    return ml_collections.ConfigDict(dict(context_length=context_length, conversation_length=conversation_length,
                                          comp_fraction=0.5, comp_keep_min=0.7, comp_keep_max=0.9))


SENTENCES = ["She lives in Moravind.", "He works as a nurse.", "Mara Lind was born in 1970.", "They like chess."]


def texts_of(n, start=0):
    """Text i: its number, then 1-4 sentences (5-20 tokens of the tiny tokenizer)."""
    return [f"{i}. " + " ".join(SENTENCES[: 1 + i % 4]) for i in range(start, start + n)]


@pytest.fixture
def corpus(tmp_path):
    """Three shards, one of each type, 20 texts each (text 0..59 in shard order)."""
    t = texts_of(60)
    pq.write_table(pa.table({"text": t[:20], "id": list(range(20))}), tmp_path / "a.parquet", row_group_size=6)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": x}) + "\n" for x in t[20:40]))
    (tmp_path / "c.txt").write_text("\n".join(t[40:60]) + "\n")
    return tmp_path, t


def test_groups_pack_consecutive_texts_within_the_evidence_length(corpus):
    path, texts = corpus
    it = iter(PackedTextDataset(str(path / "*"), TOK, data_cfg(), seed=0))
    groups = [next(it) for _ in range(40)]
    flat = [t for g in groups for t in g]
    assert flat == (texts * 2)[: len(flat)] and len(flat) > 60  # every text once per epoch, in shard order
    for g in groups:
        used = sum(len(TOK(t, add_special_tokens=False)["input_ids"]) + 1 for t in g)
        assert len(g) == 1 or used <= 48
    assert any(len(g) > 1 for g in groups)


def test_iterator_state_resumes_exactly(corpus):
    path, _ = corpus
    make = lambda texts, rng: pretrain_example(texts, rng, TOK, data_cfg())  # noqa: E731
    ds = PackedTextDataset(str(path / "*"), TOK, data_cfg(), seed=3, make_example=make)
    it = iter(ds)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    after = [next(it) for _ in range(25)]  # across a shard boundary and an epoch
    again = iter(ds)
    again.set_state(state)
    for a, b in zip(after, [next(again) for _ in range(25)]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert SEP.strip()  # groups are joined by the end-of-text separator


def test_hosts_read_disjoint_shards(corpus):
    path, texts = corpus
    seen = []
    for host in range(2):
        ds = PackedTextDataset(str(path / "*"), TOK, data_cfg(), seed=0, shard_index=host, shard_count=2)
        it = iter(ds)
        seen.append({t for _ in range(30) for t in next(it)})
    assert not seen[0] & seen[1]
    assert seen[0] == set(texts[:20] + texts[40:60]) and seen[1] == set(texts[20:40])
    with pytest.raises(InputError, match="3 shard\\(s\\) for 4 hosts"):
        PackedTextDataset(str(path / "*"), TOK, data_cfg(), seed=0, shard_index=0, shard_count=4)


def test_bad_shards(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        PackedTextDataset(str(tmp_path / "*.parquet"), TOK, data_cfg(), seed=0)
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "no_text.parquet")
    with pytest.raises(InputError, match="needs a 'text' column; it has body"):
        list(iter_texts(tmp_path / "no_text.parquet"))
    (tmp_path / "bad.txt").write_bytes(b"good line\n\xff\xfe broken\nanother\n")
    with pytest.warns(UserWarning, match=r"bad.txt, line 2: not UTF-8"):
        assert list(iter_texts(tmp_path / "bad.txt")) == ["good line", "another"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n{"body": 1}\n')
    with pytest.warns(UserWarning, match=r"bad.jsonl, line 3: no string field 'text'"):
        assert list(iter_texts(tmp_path / "bad.jsonl")) == ["ok"]
    (tmp_path / "x.csv").write_text("text\n")
    with pytest.raises(InputError, match="not a text shard"):
        PackedTextDataset(str(tmp_path / "x.*"), TOK, data_cfg(), seed=0)


def squad_parquet(path, people):
    """Hugging Face SQuAD rows (parquet) on one-sentence-per-fact contexts: two questions per context."""
    rows = []
    for i, (name, city, job) in enumerate(people):
        context = f"{name} was born in {city}. {name} works as a {job}."
        for q, (question, answer) in enumerate(((f"Where was {name} born?", city),
                                                (f"What does {name} work as?", job))):
            rows.append({"id": f"p{i}q{q}", "title": name, "context": context, "question": question,
                         "answers": {"text": [answer], "answer_start": [context.index(answer)]}})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_imported_data_end_to_end(corpus, tmp_path, capsys):
    """The paper's data path on fixture files, through the command line: SHINE pretraining on the text shards,
    `data import` of SQuAD parquet files, the multi-QA stage on the imported records (starting from the pretrained
    hypernetwork), then `eval` on the imported test records."""
    from shine_jax import cli

    path, _ = corpus
    cities, jobs = ["Moravind", "Kestrel Bay", "Dunhollow", "Ashgrove"], ["nurse", "baker", "pilot", "clerk"]
    people = [(f"Ada Quell{i}", cities[i % 4], jobs[(i // 4) % 4]) for i in range(12)]
    data = tmp_path / "data"
    data.mkdir()
    for split, part in (("train", people[:8]), ("test", people[8:])):
        squad_parquet(tmp_path / f"squad-{split}.parquet", part)
        assert cli.main(["data", "import", "--format", "squad", "--input", str(tmp_path / f"squad-{split}.parquet"),
                         "--out", str(data / f"{split}.jsonl"), "--no-progress"]) == 0
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["qa"]) == 2 for r in records)

    shapes = ["steps=3", "batch_size=2", "data.context_length=48", "data.conversation_length=64",
              "data.num_people=400", "data.train_docs=40", "data.eval_docs=8", "eval_batches=1", "log_every=1",
              "eval_every=3", "checkpoint_every=3", "optim.warmup_steps=1"]
    stages = {"pretrain": [f"data.pretrain_files='{path / '*'}'"],
              "ift_mqa": [f"data.jsonl_train='{data / 'train.jsonl'}'", f"data.jsonl_eval='{data / 'test.jsonl'}'"]}
    for stage, extra in stages.items():
        assert cli.main(["train", "--config", f"{REPO}/configs/tiny.py:{stage}", "--workdir", str(tmp_path / "run"),
                         "--no-progress", *(f"--config.{o}" for o in shapes + extra)]) == 0, capsys.readouterr().err
        summary = json.loads((tmp_path / "run" / stage / "summary.json").read_text())
        assert summary["steps"] == 3 and np.isfinite(summary["val_loss"])
    assert (tmp_path / "run" / "ift_mqa" / "final" / "shine.json").is_file()

    out = tmp_path / "eval" / "results.json"
    assert cli.main(["eval", "--workdir", str(tmp_path / "run" / "ift_mqa" / "final"), "--data",
                     str(data / "test.jsonl"), "--methods", "none,shine", "--batch-size", "4", "--max-new-tokens",
                     "4", "--no-progress", "--out", str(out)]) == 0
    methods = json.loads(out.read_text())["methods"]
    assert sorted(methods) == ["none", "shine"]
    for r in methods.values():  # each method answered the 8 imported questions of the 4 test documents
        assert (r["questions"], r["documents"]) == (8, 4) and 0.0 <= r["f1"] <= 1.0
        assert [p["id"] for p in r["predictions"]] == [rec["id"] for rec in records]
