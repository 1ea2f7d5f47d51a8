"""The demo on the small trained run (its own file, so pytest-xdist's --dist loadfile runs it beside test_eval.py's
evaluation tests instead of after them)."""

import json

import pytest

from shine_jax import cli

METHODS = ("none", "icl", "sft", "shine")


@pytest.mark.slow
def test_demo_reuses_trained_stages_and_writes_the_table(trained_workdir, tmp_path, capsys):
    import shutil

    from tests.conftest import REPO, STAGES, STEPS, trained_workdir_extra
    from tests.train_utils import small_overrides

    wd = tmp_path / "demo"
    shutil.copytree(trained_workdir, wd)
    # each stage with the very settings it was trained with (the copy's stages are reused only then)
    overrides = [f"--config.{stage}.{o}" for stage in STAGES for o in small_overrides(
        STEPS[stage], trained_workdir_extra(stage, trained_workdir), trained_workdir / "data")]
    # two of the three sets (the distractor set is built and checked in test_eval_sets.py)
    stages = ["--stages", ",".join(STAGES)]  # the shipped config starts from models/tiny_base; this run trains one
    assert cli.main(["demo", "--workdir", str(wd), "--docs", "2", "--questions", "2", "--sft-epochs", "2",
                     "--max-new-tokens", "4", "--no-progress", "--sets", "one_person,family2", *stages,
                     *overrides]) == 0
    out = capsys.readouterr().out
    for stage in ("base_pretrain", "pretrain", "ift_mqa", "ift_1qa"):
        assert f"[demo] {stage}: already trained" in out
    assert "SHINE F1 = " in out and "x none" in out and "x icl" in out and "wrong-document control F1 = " in out
    demo_methods = (*METHODS, "shine-wrong-doc")
    summary = json.loads((wd / "eval" / "results.json").read_text())
    assert list(summary["sets"]) == ["one_person", "family2"] and summary["stages"][-1] == "ift_1qa"
    for name in ("one_person", "family2"):
        assert f"### {name}: 2 documents, 4 questions" in out
        assert set(summary["sets"][name]["ratios"]) == {"shine/icl", "shine/none", "shine-wrong-doc/none"}
        results = json.loads((wd / "eval" / name / "results.json").read_text())
        assert set(results["methods"]) == set(demo_methods) and results["set"] == name
        assert len((wd / "eval" / name / "test.jsonl").read_text().splitlines()) == 2
        assert all(results["methods"][m]["questions"] == 4 for m in demo_methods)  # --questions 2, 2 documents
        assert (wd / "eval" / name / "results.md").is_file() and (wd / "eval" / name / "results.png").is_file()
    assert "### family2" in (wd / "eval" / "results.md").read_text()

    # the bank setting: each set once more among other documents of its kind, rag retrieving from the bank
    assert cli.main(["demo", "--workdir", str(wd), "--docs", "2", "--questions", "1", "--max-new-tokens", "2",
                     "--no-progress", "--sets", "one_person", "--methods", "none,rag", "--bank", "5", *stages,
                     *overrides]) == 0
    summary = json.loads((wd / "eval" / "results.json").read_text())
    assert list(summary["sets"]) == ["one_person", "one_person+bank5"]
    assert "bank" not in summary["sets"]["one_person"]
    assert summary["sets"]["one_person+bank5"]["bank"]["documents"] == 5
    assert "conversations routed to their own document" in capsys.readouterr().out

    # user errors are one line each, before any training
    for argv, message in [(["--stages", "base_pretrain"], "must end with a SHINE stage"),
                          (["--stages", "pretrain,ift_mq"], "--stages must list stages from"),
                          (["--methods", "none,rag2"], "unknown method(s) rag2"),
                          (["--bank", "-1"], "--bank must be >= 0"), (["--rag-k", "0"], "k must be >= 1"),
                          (["--config.ift_9qa.steps=2"], "unknown config field 'ift_9qa'"),
                          ([*stages, *overrides, "--config.ift_mqa.steps=21"],
                           "trained with other settings (steps: 20 -> 21)"),
                          (["--config", f"{REPO}/configs/smollm2_135m.py"], "trained with other settings")]:
        assert cli.main(["demo", "--workdir", str(wd), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
