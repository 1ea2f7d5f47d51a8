"""The evaluation harness on a small trained run: every method runs, results files are well formed, bad input."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from shine_jax import cli
from shine_jax.data.corpus import write_jsonl
from shine_jax.data.tfds_builder import load_split
from shine_jax.shine import Shine

METHODS = ("none", "icl", "sft", "shine")


@pytest.fixture(scope="module")
def test_records(trained_workdir):
    from shine_jax.train.loop import corpus_overrides
    from tests.train_utils import small_config

    cfg = small_config("ift_mqa")
    ds = load_split(trained_workdir / "data" / "tfds", "test", config="mqa", **corpus_overrides(cfg))
    records = [ds[i] for i in range(6)]
    return [dict(r, qa=r["qa"][:2]) for r in records]  # two turns each keep the compiled shapes few


@pytest.mark.slow
def test_eval_writes_results_for_every_method(trained_workdir, test_records, tmp_path, capsys):
    data = tmp_path / "test.jsonl"
    write_jsonl(test_records, data)
    out = tmp_path / "res" / "results.json"
    assert cli.main(["eval", "--workdir", str(trained_workdir), "--data", str(data), "--out", str(out),
                     "--batch-size", "4", "--max-new-tokens", "6", "--sft-epochs", "2", "--no-progress"]) == 0
    res = json.loads(out.read_text())
    n_q = sum(len(r["qa"]) for r in test_records)
    assert list(res["methods"]) == list(METHODS)
    for name, r in res["methods"].items():
        assert 0.0 <= r["em"] <= r["f1"] <= 1.0, name
        assert r["em"] <= r["contains"] <= 1.0, name  # an exact match always contains the answer
        assert r["questions"] == n_q and r["documents"] == len(test_records)
        assert len(r["per_turn_f1"]) == max(len(x["qa"]) for x in test_records)
        assert r["gen_s_per_question"] > 0
        assert len(r["predictions"]) == len(test_records)
    assert res["methods"]["shine"]["doc_cost_s"] > 0 and res["methods"]["sft"]["doc_cost_s"] > 0
    table, per_turn = (tmp_path / "res" / "results.md").read_text().split("\nF1 per turn:\n\n")
    assert table.count("\n") == 2 + len(METHODS) and "| shine |" in table
    turns = max(len(x["qa"]) for x in test_records)  # multi-turn documents: F1 per turn, as the paper's Table 1
    assert per_turn.splitlines()[0] == "| method | " + " | ".join(f"turn {t + 1}" for t in range(turns)) + " |"
    assert [row.split(" | ")[0] for row in per_turn.splitlines()[2:]] == [f"| {m}" for m in METHODS]
    png = (tmp_path / "res" / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| icl |" in capsys.readouterr().out


@pytest.mark.slow
def test_wrong_doc_control_uses_the_next_documents_generated_lora(trained_workdir, test_records, tmp_path,
                                                                  monkeypatch, capsys):

    from shine_jax.eval.harness import evaluate
    from shine_jax.eval.methods import EvalSettings

    shine = Shine.load(trained_workdir)
    records = [dict(r, qa=r["qa"][:1]) for r in test_records[:3]]  # one turn: one generate call per batch
    passed = []
    generate = shine.base.generate
    monkeypatch.setattr(shine.base, "generate", lambda *a, lora=None, **k: passed.append(lora) or generate(
        *a, lora=lora, **k))
    evaluate(shine, records, ["shine-wrong-doc"], EvalSettings(batch_size=2, max_new_tokens=2), show_progress=False)
    ids, mask = shine.base.encode([r["context"] for r in records], shine.max_evidence_length)
    own = shine.generate_lora(ids, mask)  # row i: document i's LoRA, generated in one batch
    assert len(passed) == 2  # batches [0, 1] and [2]: document 1's LoRA comes from the other batch
    for lora, batch in zip(passed, ([0, 1], [2])):
        for row, i in enumerate(batch):
            differs = False  # from document i's own LoRA: else the equality below would prove nothing
            for key, leaf in own.items():
                for ab in ("A", "B"):
                    got, want = np.asarray(lora[key][ab][:, row]), np.asarray(leaf[ab][:, (i + 1) % 3])
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=f"{key}.{ab} of doc {i}")
                    differs |= not np.allclose(got, np.asarray(leaf[ab][:, i]), rtol=1e-5, atol=1e-7)
            assert differs, i
    data = tmp_path / "one.jsonl"
    write_jsonl(records, data)
    assert cli.main(["eval", "--workdir", str(trained_workdir), "--data", str(data), "--limit", "1",
                     "--methods", "none,shine-wrong-doc", "--max-doc-tokens", "512", "--no-progress",
                     "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: method shine-wrong-doc needs at least 2 documents" in err[0], err


@pytest.mark.slow
def test_bad_documents_are_reported_and_skipped(trained_workdir, test_records, tmp_path, capsys):
    good = test_records[0]
    lines = [json.dumps(good), "{not json", json.dumps({"id": "noqa", "context": "x"}),
             json.dumps({"id": "empty", "context": "  ", "qa": good["qa"]}),
             json.dumps({"id": "long", "context": good["context"] * 30, "qa": good["qa"][:1]})]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    base = ["eval", "--workdir", str(trained_workdir), "--data", str(data), "--methods", "none",
            "--batch-size", "2", "--max-new-tokens", "2", "--max-doc-tokens", "512", "--no-progress",
            "--out", str(tmp_path / "r.json")]
    assert cli.main(base) == 2
    assert "line 2" in capsys.readouterr().err
    assert cli.main(base + ["--skip-bad-lines", "--on-long", "refuse"]) == 0
    err = capsys.readouterr().err
    assert "line 2" in err and "line 3" in err and "line 4: the 'context' is empty" in err
    assert "document long has" in err and "more than the maximum" in err
    assert json.loads((tmp_path / "r.json").read_text())["methods"]["none"]["documents"] == 1
    assert cli.main(base + ["--skip-bad-lines"]) == 0  # truncation (the default) keeps the long document
    assert "truncated" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["methods"]["none"]["documents"] == 2
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(json.dumps(good).encode().replace(b"}", b', "x": "\xe9"}', 1) + b"\n")
    assert cli.main(base[:4] + [str(latin)] + base[5:]) == 2
    assert "UTF-8" in capsys.readouterr().err


@pytest.mark.slow
def test_ask_and_internalize(trained_workdir, test_records, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(test_records[0]["context"])
    question = test_records[0]["qa"][0]["question"]
    assert cli.main(["ask", "--workdir", str(trained_workdir), "--doc", str(doc), "--question", question,
                     "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    # one line: the answer of the generated LoRA (a 20-step fixture model may well answer with nothing)
    assert out.count("\n") == 1
    assert out.strip() == Shine.load(trained_workdir).ask(test_records[0]["context"], question, max_new_tokens=4)
    data = tmp_path / "docs.jsonl"
    write_jsonl(test_records[:3], data)
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data),
                     "--out", str(tmp_path / "adapters")]) == 0
    # the fixture's base was trained here: no HF folder to name as the adapters' base, and the user is told how
    assert "names no base" in capsys.readouterr().err
    made = sorted(p.name for p in (tmp_path / "adapters").iterdir())
    assert made == sorted(r["id"] for r in test_records[:3])
    assert (tmp_path / "adapters" / made[0] / "adapter_model.safetensors").is_file()
    prov = json.loads((tmp_path / "adapters" / made[0] / "shine_provenance.json").read_text())
    assert prov["trained"]["stage"] == "ift_1qa" and prov["adapter_rank"] == prov["lora_rank"]
    # three documents in one adapter of rank 3 r, named after the base the user gives
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data), "--compose",
                     "--scale", "0.5", "--base-model", "org/base-model", "--out", str(tmp_path / "composed")]) == 0
    cfg = json.loads((tmp_path / "composed" / "adapter_config.json").read_text())
    assert cfg["r"] == 3 * prov["lora_rank"] and cfg["base_model_name_or_path"] == "org/base-model"
    assert json.loads((tmp_path / "composed" / "shine_provenance.json").read_text())["adapter_scale"] == 0.5
    # generated two documents at a time (--batch-size), the composed adapter is the same
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data), "--compose",
                     "--scale", "0.5", "--base-model", "org/base-model", "--batch-size", "2",
                     "--out", str(tmp_path / "composed2")]) == 0
    one, two = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("composed", "composed2"))
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-7, err_msg=key)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert cli.main(["ask", "--workdir", str(trained_workdir), "--doc", str(empty), "--question", "q"]) == 2
    assert "is empty" in capsys.readouterr().err
    # the fixture's document is longer than the fixture model's evidence length: refused on request
    assert cli.main(["ask", "--workdir", str(trained_workdir), "--doc", str(doc), "--question", question,
                     "--on-long", "refuse"]) == 2
    assert re.search(r"error: the document has \d+ tokens, more than the maximum \d+", capsys.readouterr().err)
    # internalize: ids with path parts stay inside --out; an empty context is one error line
    hostile = [dict(test_records[0], id="../escaped"), dict(test_records[1], id="/tmp/abs")]
    write_jsonl(hostile, data)
    out = tmp_path / "inside"
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["_escaped", "_tmp_abs"]
    assert not (tmp_path / "escaped").exists()
    write_jsonl([dict(test_records[0], context="  ")], data)
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data), "--out", str(out),
                     "--overwrite"]) == 2
    assert "line 1: the 'context' is empty" in capsys.readouterr().err
    # documents without questions are enough; --skip-bad-lines skips the bad ones with a numbered warning
    data.write_text("\n".join([json.dumps({"id": "a", "context": test_records[0]["context"]}), "{not json",
                                json.dumps({"id": "b", "context": " "})]) + "\n")
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--jsonl", str(data), "--out",
                     str(tmp_path / "skipped"), "--skip-bad-lines"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "line 2: invalid JSON" in err and "line 3: the 'context' is empty" in err
    assert sorted(p.name for p in (tmp_path / "skipped").iterdir()) == ["a"]
    # the long-document policy of ask: refused on request, else truncated with a warning giving both lengths
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--doc", str(doc), "--out",
                     str(tmp_path / "long"), "--on-long", "refuse"]) == 2
    assert re.search(r"error: document doc has \d+ tokens, more than the maximum \d+", capsys.readouterr().err)
    assert not (tmp_path / "long").exists()
    assert cli.main(["internalize", "--workdir", str(trained_workdir), "--doc", str(doc), "--out",
                     str(tmp_path / "long")]) == 0
    assert re.search(r"warning: document doc has \d+ tokens, more than the maximum \d+; truncated",
                     capsys.readouterr().err)


def test_converse_on_one_cached_adapter(trained_workdir, test_records, tmp_path, capsys, monkeypatch):
    import io

    shine = Shine.load(trained_workdir)
    doc, qa = test_records[0]["context"], test_records[0]["qa"]
    lora = shine.adapter(doc)
    first = shine.chat(lora, [{"role": "user", "content": qa[0]["question"]}], max_new_tokens=4)
    assert first == shine.ask(doc, qa[0]["question"], max_new_tokens=4)  # turn 1 is exactly `ask`
    history = [{"role": "user", "content": qa[0]["question"]}, {"role": "assistant", "content": first},
               {"role": "user", "content": qa[1]["question"]}]
    second = shine.chat(lora, history, max_new_tokens=4)
    for bad, match in [([], "end with a user message"), (history[:2], "end with a user message"),
                       ([{"role": "system", "content": "x"}, history[0]], "roles must be user or assistant")]:
        with pytest.raises(ValueError, match=match):
            shine.chat(lora, bad)
    path = tmp_path / "doc.txt"
    path.write_text(doc)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{qa[0]['question']}\n\n{qa[1]['question']}\n"))
    assert cli.main(["converse", "--workdir", str(trained_workdir), "--doc", str(path), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert f"Q: {qa[0]['question']}\nA: {first}\nQ: {qa[1]['question']}\nA: {second}\n" in out
    assert "adapter generated in" in out
