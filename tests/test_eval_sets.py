"""Fast checks of the evaluation layer without a trained model: the wrong-document control (on an oracle model
that answers from whatever document its LoRA carries), the demo's test sets, the F1 ratios and the combined
results files, out-of-range seed / distractors, and benchmarks/demo_seeds.py."""

import importlib.util
import json

import jax.numpy as jnp
import numpy as np
import pytest

from shine_jax import cli
from shine_jax.data.corpus import find_full_names
from shine_jax.eval.harness import evaluate
from shine_jax.eval.methods import EvalSettings
from shine_jax.eval.report import f1_ratios, ratio_line, write_summary
from shine_jax.eval.testsets import SetSpec, build_sets, one_person, parse_range, people_of_test_split
from shine_jax.model.config import ModelConfig
from shine_jax.model.hypernet import HyperConfig
from shine_jax.shine import Shine
from shine_jax.train.config import ConfigError, load_config
from tests.conftest import REPO
from tests.train_utils import SMALL


# ------------------------------------------------------------------------------------------------ oracle model
class Texts:
    """Each whole text is one token id (0: padding), so prompts and answers pass through the harness unchanged."""

    pad_token_id = 0

    def __init__(self):
        self.texts = [""]

    def id(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)

    pad_token_id = 0  # the empty text

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.id(text)]}

    def apply_chat_template(self, history, tokenize=False, add_generation_prompt=True):
        return history[-1]["content"]  # the question (none and the LoRA methods put nothing before it)


class OracleBase:
    """Answers perfectly from the document whose token its LoRA carries, and nothing without a LoRA: F1 is 1
    exactly when every row gets its own document's LoRA, 0 when every row gets another document's."""

    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                      num_kv_heads=2, head_dim=16)

    def __init__(self, records):
        self.tokenizer = Texts()
        self.answers = {r["context"]: {q["question"]: q["answers"][0] for q in r["qa"]} for r in records}
        self.used = []  # (question, the document whose LoRA answered it)

    def encode(self, docs, max_length):
        ids = np.array([[self.tokenizer.id(d)] for d in docs], np.int32)
        return ids, np.ones_like(ids)

    def generate(self, ids, mask, max_new_tokens, lora=None):
        texts = self.tokenizer.texts
        out = []
        for r, token in enumerate(np.asarray(ids)[:, -1]):
            answer = ""
            if lora is not None and token:
                doc = texts[int(np.asarray(lora["doc"]["A"])[0, r, 0, 0])]
                self.used.append((texts[token], doc))
                answer = self.answers[doc].get(texts[token], "")
            out.append([self.tokenizer.id(answer)])
        return np.array(out)

    def decode(self, ids):
        return [self.tokenizer.texts[i] for i in np.asarray(ids)[:, 0]]


class OracleShine:
    max_evidence_length = 8
    encode_evidence = Shine.encode_evidence  # the real document policy, on the oracle's tokenizer
    cfg = HyperConfig(lora_rank=2)  # what the storage column counts (the oracle's LoRA is a stand-in)

    def __init__(self, records):
        self.base = OracleBase(records)

    def generate_lora(self, ids, mask):  # [L=1, B, 1, 1]: the document's token (left-padded: the last), batch on axis 1
        return {"doc": {"A": jnp.asarray(ids, jnp.float32)[None, :, -1:, None]}}


def toy_records(n):
    """Documents with 1-3 questions each (turns of different lengths across a batch), no answer shared."""
    return [{"id": f"d{i}", "context": f"document {i}",
             "qa": [{"question": f"q{i}.{j}", "answers": [f"a{i}.{j}"]} for j in range(1 + i % 3)]} for i in range(n)]


def test_wrong_doc_control_answers_with_the_next_documents_lora():
    records = toy_records(5)
    shine = OracleShine(records)
    settings = EvalSettings(batch_size=2, max_new_tokens=1)  # batches [0, 1], [2, 3], [4]: the derangement crosses them
    res = evaluate(shine, records, ["none", "shine", "shine-wrong-doc"], settings, show_progress=False)["methods"]
    assert res["shine"]["f1"] == 1.0 and res["none"]["f1"] == 0.0  # the oracle reads its LoRA, so the check can fail
    assert res["shine-wrong-doc"]["f1"] == 0.0 < res["shine"]["f1"]
    assert res["shine-wrong-doc"]["questions"] == res["shine"]["questions"] == sum(len(r["qa"]) for r in records)
    n_shine = sum(len(r["qa"]) for r in records)
    wrong = shine.base.used[n_shine:]  # evaluate ran shine first, then the control
    owner = {q["question"]: i for i, r in enumerate(records) for q in r["qa"]}
    assert len(wrong) == n_shine
    assert all(doc == records[(owner[q] + 1) % 5]["context"] for q, doc in wrong)  # i gets (i + 1) mod n's LoRA
    assert all(doc == records[owner[q]]["context"] for q, doc in shine.base.used[:n_shine])
    assert f1_ratios(res) == {"shine/none": pytest.approx(1e9), "shine-wrong-doc/none": 0.0}
    # storage per document: nothing without memory; a float32 adapter of every projection of every layer
    lora_numbers = 2 * sum(2 * (i + o) for i, o in OracleBase.cfg.module_dims().values())  # 2 layers, r = 2
    assert res["none"]["storage_bytes_per_doc"] == 0.0
    assert res["shine"]["storage_bytes_per_doc"] == res["shine-wrong-doc"]["storage_bytes_per_doc"] == 4 * lora_numbers


def test_wrong_doc_control_needs_two_documents():
    records = toy_records(1)
    with pytest.raises(ValueError, match="method shine-wrong-doc needs at least 2 documents .*, got 1"):
        evaluate(OracleShine(records), records, ["shine", "shine-wrong-doc"], show_progress=False)
    evaluate(OracleShine(records), records, ["shine"], show_progress=False)  # the other methods do not care


# ------------------------------------------------------------------------------------------------ test sets
@pytest.fixture(scope="module")
def people():
    return people_of_test_split(400, 0)  # the corpus of tests.train_utils.SMALL: 40 test people


def test_sets_are_one_person_and_the_same_documents_with_distractors(people):
    sets = build_sets(["one_person", "distractors"], SetSpec(people, 12))
    again = build_sets(["one_person", "distractors"], SetSpec(people, 12))
    assert sets == again  # deterministic in the seed
    test_names = {p.full_name for p in people}
    extra = []
    for plain, padded in zip(sets["one_person"], sets["distractors"]):
        names = find_full_names(plain["context"])
        assert len(names) == 1 and names[0] in test_names
        padded_names = find_full_names(padded["context"])
        assert names[0] in padded_names and set(padded_names) <= test_names  # distractors: test people only
        extra.append(len(padded_names) - 1)
        assert padded["qa"] == plain["qa"] and padded["id"] == f"{plain['id']}+d{extra[-1]}"
        assert all(p in padded["context"].split("\n\n") for p in plain["context"].split("\n\n"))
    assert set(extra) == {1, 2, 3}  # k drawn from 1..3 (12 documents show every value with this seed)
    assert one_person(SetSpec(people, 12, seed=1)) != sets["one_person"]
    fixed = build_sets(["distractors"], SetSpec(people, 6, distractors=(2, 2)))["distractors"]
    assert all(len(find_full_names(r["context"])) == 3 for r in fixed)


@pytest.mark.parametrize("text,expected", [("1-3", (1, 3)), ("2", (2, 2)), (" 0 - 8 ", (0, 8))])
def test_distractor_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["3-1", "1-9", "-1", "a-b", "", "1,3"])
def test_bad_distractor_range_is_one_line(text):
    with pytest.raises(ValueError, match=r"^--distractors must be MIN-MAX .* <= 8, got"):
        parse_range(text)


def test_summary_has_every_set_and_its_ratios(tmp_path):
    def results(f1s):
        return {"data": "x", "methods": {m: {"f1": f, "em": f / 2, "questions": 10, "documents": 2, "doc_cost_s": 0.1,
                                             "gen_s_per_question": 0.01, "per_turn_f1": [f], "predictions": []}
                                         for m, f in f1s.items()}}
    sets = {"one_person": results({"none": 0.1, "icl": 0.2, "shine": 0.4, "shine-wrong-doc": 0.1}),
            "distractors": results({"none": 0.1, "shine": 0.3})}
    files = write_summary(sets, {"seed": 3}, tmp_path / "results.json")
    saved = json.loads(files["json"].read_text())
    assert saved["seed"] == 3 and list(saved["sets"]) == ["one_person", "distractors"]
    assert saved["sets"]["one_person"]["ratios"] == pytest.approx(
        {"shine/icl": 2.0, "shine/none": 4.0, "shine-wrong-doc/none": 1.0})
    assert "predictions" not in saved["sets"]["distractors"]["methods"]["shine"]
    md = files["markdown"].read_text()
    assert "### one_person: 2 documents, 10 questions" in md and "| shine-wrong-doc | 0.100 |" in md
    assert "SHINE F1 = 2.00x icl, 4.00x none; wrong-document control F1 = 1.00x none" in md
    assert ratio_line(f1_ratios(sets["distractors"]["methods"])) == "SHINE F1 = 3.00x none"


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("override,field", [("seed=-1", "'seed'"), ("seed=2147483648", "'seed'"),
                                            ("data.distractors=9", "'data.distractors'"),
                                            ("data.distractors=-1", "'data.distractors'")])
def test_out_of_range_seed_and_distractors_name_the_field(override, field):
    with pytest.raises(ConfigError, match=f"config field {field}: must lie in"):
        load_config(f"{REPO}/configs/tiny.py:ift_mqa", [override])
    load_config(f"{REPO}/configs/tiny.py:ift_mqa", ["seed=2147483647", "data.distractors=8"])  # the bounds are valid


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_turns_bad_seed_and_demo_options_into_one_line(tmp_path, capsys):
    assert cli.main(["train", "--config", f"{REPO}/configs/tiny.py:pretrain", "--workdir", str(tmp_path / "t"),
                     "--config.seed=2147483648"]) == 2
    assert "config field 'seed': must lie in [0, 2**31 - 1], got 2147483648" in one_error_line(capsys)
    # each fails before any training (--stages pretrain and SMALL keep a missed check cheap: it would stop at
    # the missing base model)
    demo = ["demo", "--workdir", str(tmp_path / "d"), "--stages", "pretrain", *[f"--config.{o}" for o in SMALL]]
    for argv, message in [(["--config.data.distractors=9"], "config field 'data.distractors': must lie in [0, 8]"),
                          (["--distractors", "2-9"], "--distractors must be MIN-MAX"),
                          (["--sets", "one_person,squad"], "--sets must name sets from one_person, distractors"),
                          (["--docs", "0"], "--docs must be >= 1"),
                          (["--docs", "1"], "method shine-wrong-doc needs at least 2 documents")]:
        assert cli.main(demo + argv) == 2
        assert message in one_error_line(capsys)
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------------------ demo_seeds
def demo_seeds():
    spec = importlib.util.spec_from_file_location("demo_seeds", REPO / "benchmarks" / "demo_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_seeds_dry_run_prints_one_demo_per_seed(tmp_path, capsys):
    assert demo_seeds().main(["--dry-run", "--workdir", str(tmp_path), "--docs", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for seed, line in enumerate(lines):
        assert f" -m shine_jax.cli demo --workdir {tmp_path}/seed{seed} --config.seed={seed} --docs 8" in line


def test_demo_seeds_aggregates_mean_std_min():
    def summary(shine, none):
        methods = {"none": {"f1": none, "em": none}, "shine": {"f1": shine, "em": shine / 2}}
        return {"sets": {"one_person": {"methods": methods, "ratios": {"shine/none": shine / none}}}}

    agg = demo_seeds().aggregate({0: summary(0.3, 0.1), 1: summary(0.5, 0.1)})["one_person"]
    assert agg["methods"]["shine"]["f1"] == pytest.approx({"mean": 0.4, "std": 2 ** 0.5 * 0.1, "min": 0.3, "n": 2})
    assert agg["ratios"]["shine/none"]["min"] == pytest.approx(3.0)
    assert agg["methods"]["none"]["em"]["std"] == 0.0


def test_wrong_doc_never_takes_a_document_naming_the_same_person():
    """On the distractor set the next document may hold this document's person as a distractor; the control then
    skips to the next document that names none of its people."""
    from shine_jax.data import corpus
    from shine_jax.eval.methods import WrongDocLoRA

    people = corpus.make_people(60, 0)
    a, b, c = (corpus.make_documents([p], 0, "train", 1, min_people=1, max_people=1, min_facts=2, max_facts=2)[0]
               for p in people[:3])
    b_with_a = {**b, "context": b["context"] + "\n\n" + a["context"]}
    sources = WrongDocLoRA(64).memory_sources([a["context"], b_with_a["context"], c["context"]])
    assert sources == [c["context"], c["context"], a["context"]]


def _results(f1s: dict, per_turn: dict | None = None) -> dict:
    return {"methods": {m: {"f1": f, "em": f / 2, "contains": f, "questions": 6, "documents": 2,
                            "per_turn_f1": (per_turn or {}).get(m, [f]), "doc_cost_s": 0.0,
                            "gen_s_per_question": 0.0} for m, f in f1s.items()}}


def test_per_turn_f1_is_a_table_for_multi_turn_data_only():
    from shine_jax.eval.report import per_turn_table

    assert per_turn_table(_results({"none": 0.1, "shine": 0.5})) == ""
    table = per_turn_table(_results({"none": 0.1, "shine": 0.5}, {"none": [0.2, 0.0], "shine": [0.6, 0.4, 0.5]}))
    assert table.splitlines() == ["| method | turn 1 | turn 2 | turn 3 |", "|---|---:|---:|---:|",
                                  "| none | 0.200 | 0.000 |  |", "| shine | 0.600 | 0.400 | 0.500 |"]


def test_report_puts_several_sets_in_one_table(tmp_path, capsys):
    """``shine-jax report``: a row per method, a column per set, the mean where a method ran on every set; bad
    --set values are one error line each."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_results({"none": 0.1, "icl": 0.6, "shine": 0.5})))
    b.write_text(json.dumps(_results({"none": 0.2, "shine": 0.3})))
    out = tmp_path / "t" / "table.md"
    assert cli.main(["report", "--set", f"squad={a}", "--set", f"hotpot={b}", "--out", str(out)]) == 0
    text = out.read_text()
    assert text in capsys.readouterr().out
    f1 = text.split("\n\nEM\n\n")[0].splitlines()
    assert f1[2:] == ["| method | squad | hotpot | mean |", "|---|---:|---:|---:|", "| none | 0.100 | 0.200 | 0.150 |",
                      "| icl | 0.600 |  |  |", "| shine | 0.500 | 0.300 | 0.400 |"]
    assert "| shine | 0.250 | 0.150 | 0.200 |" in text.split("\n\nEM\n\n")[1]

    (tmp_path / "bad.json").write_text(json.dumps({"sets": {}}))
    for value, message in ((f"squad{a}", "expected NAME=RESULTS.json"), (f"x={tmp_path / 'none.json'}", "not a file"),
                           (f"x={tmp_path / 'bad.json'}", "not the results.json of one `shine-jax eval` run")):
        assert cli.main(["report", "--set", value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
