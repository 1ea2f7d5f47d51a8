"""Retrieval: the JAX sentence encoder against transformers' BERT, chunking, the chunk index and ``rag`` in the
harness (own-document and bank settings)."""

import numpy as np
import pytest

from shine_jax.errors import InputError
from shine_jax.eval.retrieval import ChunkIndex, RetrievalSettings, chunk_text
from shine_jax.eval.sentence_encoder import SentenceEncoder, default_folder

TEXTS = ["What is Rolisse Lathbury's job?",
         "Rolisse Lathbury currently resides in Moravind. She works as a landscape gardener.",
         "tiny", "Paris is the capital of France, and its largest city by far."]


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(batch_size=4)


def test_sentence_encoder_matches_transformers_bert(encoder):
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(default_folder())).eval()
    batch = AutoTokenizer.from_pretrained(str(default_folder()))(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    w = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1).numpy()
    ours = encoder(TEXTS + TEXTS[:1])  # 5 texts, batch 4: a padded second batch
    np.testing.assert_allclose(ours[:4], ref, atol=2e-6)
    np.testing.assert_allclose(ours[4], ref[0], atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_chunks_are_token_windows_of_the_text(encoder):
    tok = encoder.tokenizer
    text = " ".join(f"word{i}" for i in range(60))
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    chunks = chunk_text(tok, text, 16, 4)
    assert all(c in text for c in chunks)
    assert chunks[0] == text[: len(chunks[0])] and text.endswith(chunks[-1])
    lengths = [len(tok(c, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(lengths) <= 16 and len(chunks) == -(-(n - 4) // 12)
    assert chunk_text(tok, "", 16, 4) == [] and chunk_text(tok, "short text", 16, 4) == ["short text"]


def test_retrieval_finds_the_planted_document(encoder):
    bank = ["The Eiffel Tower stands in Paris. It was finished in 1889.",
            "Marra Tollvik works as a glassblower in Quenby. She was born in 1971.",
            "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
            "The Danube flows through ten countries into the Black Sea."]
    index = ChunkIndex.build(bank, encoder, encoder.tokenizer, RetrievalSettings(chunk_tokens=8, overlap=2, k=1))
    assert list(index.route(["What is Marra Tollvik's occupation?", "Which river reaches the Black Sea?",
                             "When was the Eiffel Tower completed?"])) == [1, 3, 0]
    # restricted to one document, every hit is that document's
    hits = index.search(["What is Marra Tollvik's occupation?"] * 2, 2, only_docs=[2, 0])
    assert {int(index.docs[c]) for c in hits[0]} == {2} and {int(index.docs[c]) for c in hits[1]} == {0}
    with pytest.raises(InputError, match="k = 99 chunks"):
        index.search(["q"], 99)
    # storage: the index keeps every chunk's float32 vector and its text, per bank document
    dim = index.vectors.shape[1]
    assert index.vectors.dtype == np.float32
    assert index.bytes_per_document() == (4 * dim * len(index) + sum(len(t.encode()) for t in index.texts)) / 4


@pytest.mark.parametrize("field,value,match", [("chunk_tokens", 0, "chunk size"), ("overlap", 64, "overlap"),
                                                ("k", 0, "k must be"), ("embedder", "bm25", "unknown retrieval")])
def test_bad_retrieval_settings_are_one_line_errors(field, value, match):
    with pytest.raises(InputError, match=match):
        RetrievalSettings(**{field: value}).check()


def test_empty_bank_is_refused(encoder):
    with pytest.raises(InputError, match="bank is empty"):
        ChunkIndex.build([], encoder, encoder.tokenizer, RetrievalSettings())


def test_rag_in_the_harness_own_document_and_bank(trained_workdir):
    from shine_jax.eval.harness import evaluate
    from shine_jax.eval.methods import EvalSettings
    from shine_jax.shine import Shine

    shine = Shine.load(trained_workdir)
    records = [{"id": "a", "context": "Marra Tollvik works as a glassblower in Quenby.",
                "qa": [{"question": "What is Marra Tollvik's job?", "answers": ["glassblower"]}]},
               {"id": "b", "context": "The Danube flows through ten countries into the Black Sea.",
                "qa": [{"question": "Which river reaches the Black Sea?", "answers": ["the Danube"]},
                       {"question": "How many countries?", "answers": ["ten"]}]}]
    settings = EvalSettings(batch_size=2, max_new_tokens=2, retrieval=RetrievalSettings(chunk_tokens=32, k=1))
    own = evaluate(shine, records, ["rag"], settings, show_progress=False)
    assert own["methods"]["rag"]["questions"] == 3 and own["methods"]["rag"]["top1_chunk_from_own_doc"] == 1.0
    assert "bank" not in own
    extra = ["Photosynthesis turns light into sugar.", "The Eiffel Tower stands in Paris."]
    banked = evaluate(shine, records, ["none", "rag"], settings, show_progress=False, bank=extra)
    assert banked["bank"]["documents"] == 4 and banked["bank"]["routed_to_own_document"] == 1.0
    assert banked["methods"]["rag"]["top1_chunk_from_own_doc"] >= 2 / 3


def test_eval_cli_bank_and_rag_options(trained_workdir, tmp_path, capsys):
    import json

    from shine_jax import cli
    from shine_jax.data.corpus import write_jsonl

    data, bank, out = tmp_path / "test.jsonl", tmp_path / "bank.jsonl", tmp_path / "r.json"
    write_jsonl([{"id": "a", "context": "Marra Tollvik works as a glassblower in Quenby.",
                  "qa": [{"question": "What is Marra Tollvik's job?", "answers": ["glassblower"]}]}], data)
    write_jsonl([{"id": "x", "context": "The Danube flows into the Black Sea.",
                  "qa": [{"question": "Where does the Danube flow?", "answers": ["the Black Sea"]}]}], bank)
    common = ["eval", "--workdir", str(trained_workdir), "--data", str(data), "--out", str(out), "--no-progress",
              "--max-new-tokens", "2"]
    assert cli.main(common + ["--methods", "none,rag", "--bank", str(bank), "--rag-k", "1"]) == 0
    results = json.loads(out.read_text())
    assert results["bank"]["documents"] == 2 and results["bank"]["file"] == str(bank)
    assert set(results["methods"]) == {"none", "rag"}
    for bad, match in [(["--rag-k", "0"], "k must be >= 1"), (["--rag-overlap", "64"], "overlap")]:
        capsys.readouterr()
        assert cli.main(common + ["--methods", "rag"] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and match in err[0]
