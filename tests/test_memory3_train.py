"""memory3_train (``data.memory3_data``, ``memory3.read_loss``, the stage in ``train.loop``) and the memory3 method
reading with its result: the rows a training text reads never include its own reference, the training loss reads
memories exactly as generation does, the stage lowers its loss on a random base, and evaluation loads what it
trained. The random base is small (2 layers, d=32) and has the shipped tiny base's tokenizer."""

import dataclasses
import json
import pathlib
import random
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shine_jax import cli
from shine_jax.base_model import BaseModel, load_tokenizer_from
from shine_jax.data import corpus
from shine_jax.data import memory3_data as m3d
from shine_jax.eval import memory3 as m3
from shine_jax.eval.methods import EvalSettings, make_methods
from shine_jax.eval.retrieval import ChunkIndex, RetrievalSettings
from shine_jax.model.config import ModelConfig
from shine_jax.model.decoder import positions_from_mask
from shine_jax.train.config import ConfigError, check_stages, load_config, side_stages, trained_settings

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_BASE = REPO / "models" / "tiny_base"
S = m3.Memory3Settings(reference_tokens=24, top_k=4, memories=2, interval=16)
SMALL = ModelConfig(family="llama", vocab_size=2048, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=2, num_kv_heads=2, head_dim=16)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer_from(TINY_BASE)


@pytest.fixture(scope="module")
def small_hf(tok, tmp_path_factory):
    """A random 2-layer base as a Hugging Face folder with the tiny base's tokenizer."""
    return BaseModel.random(SMALL, seed=0, tokenizer=tok).to_hf(tmp_path_factory.mktemp("m3t") / "hf")


def fake_embedder(texts):
    """Bag of words hashed into 64 buckets: similar texts are close, identical ones equal."""
    out = np.zeros((len(texts), 64), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, sum(map(ord, w)) % 64] += 1
    return out + 1e-3


def test_a_training_text_never_reads_its_own_reference(tok, tmp_path):
    docs = [r["context"] for r in corpus.build_corpus(0, 400, {"train": 6, "validation": 0, "test": 0})["train"]]
    docs.append(docs[0])  # an identical twin: its references equal others, yet each is still not its own memory
    pool = m3d.LmPool.build(tok, docs, S, fake_embedder, tmp_path)
    r = len(pool)
    assert r > len(docs) and pool.neighbours.shape == (r, S.memories)
    own = np.arange(r)[:, None]
    assert (pool.neighbours != own).all() and (pool.neighbours >= 0).all()
    twins = [i for i in range(r) for j in range(r) if i != j and pool.refs[i] == pool.refs[j]]
    assert twins and all(pool.refs[pool.neighbours[i][0]] == pool.refs[i] for i in twins)  # the twin, not itself
    for i in range(r):  # the rows an LM example reads are its neighbours' references, in order
        row = m3d.lm_row(tok, pool, i, S, 32)
        want = m3.reference_rows_of_ids(tok, [pool.refs[j] for j in pool.neighbours[i]], S)
        for got, ref in zip((row["ref_ids"], row["ref_mask"], row["ref_valid"]), want):
            np.testing.assert_array_equal(got, ref)
        assert (row["labels"][row["attention_mask"] == 1] == pool.refs[i][:32]).all()
    # kept on disk once per data build, read back the same
    again = m3d.LmPool.build(tok, docs, S, lambda texts: pytest.fail("embedded again"), tmp_path)
    np.testing.assert_array_equal(again.neighbours, pool.neighbours)
    # fewer others than memories: the rest is no memory
    assert m3d.nearest_others(np.eye(2, dtype=np.float32), 3).tolist() == [[1, -1, -1], [0, -1, -1]]


def test_a_qa_row_reads_its_documents_references_not_the_document(tok):
    record = corpus.fresh_document(random.Random(3), max_people=2)
    row = m3d.qa_row(tok, record, S, 256)
    texts = m3d.reference_texts(tok, record["context"], S)
    cut = dataclasses.replace(RetrievalSettings(), chunk_tokens=S.reference_tokens, overlap=0)
    assert texts == ChunkIndex.build([record["context"]], fake_embedder, tok, cut).texts  # as build_bank cuts
    want = m3.reference_rows(tok, texts[: S.memories], S, S.memories)
    for got, ref in zip((row["ref_ids"], row["ref_mask"], row["ref_valid"]), want):
        np.testing.assert_array_equal(got, ref)
    prompt = tok.decode(row["input_ids"][row["attention_mask"] == 1])
    assert record["qa"][0]["question"] in prompt and record["context"][:40] not in prompt
    answers = tok.decode(row["labels"][row["labels"] >= 0])
    assert all(qa["answers"][0] in answers for qa in record["qa"])


def test_the_training_loss_reads_memories_as_generation_does(tok):
    """read_loss's NLL of one next token equals the one from memory3's prefill of the same prompt and memories."""
    base = BaseModel.random(SMALL, seed=1, tokenizer=tok)
    refs = ["Tamsin Halloran works as a potter in Velmora.", "She was born on May 2, 1961 in Dunmere."]
    ids, mask, valid = m3.reference_rows(tok, refs, S, S.memories)
    keys, values = m3._encode(base.graphdef, m3.memory_layers(SMALL), S.top_k, base.state, ids, mask, valid)
    bank = m3.MemoryBank(None, np.asarray(keys), np.asarray(values), np.minimum(valid.sum(1), S.top_k), None, 1, 0)
    prompt = tok("What is Tamsin Halloran's job?", add_special_tokens=False)["input_ids"]
    t = len(prompt) + 3  # left padding
    p_ids = np.zeros((1, t), np.int32)
    p_mask = np.zeros((1, t), np.int32)
    p_ids[0, 3:], p_mask[0, 3:] = prompt, 1
    k, v, ok = bank.gather(np.array([[0, 1]]))
    sees = (p_mask[:, :, None] == 1) & ok[:, None, :]
    logits, _ = m3._prefill(base.graphdef, S.top_k, t + 1, base.state, jnp.asarray(p_ids), jnp.asarray(p_mask), (),
                            jnp.asarray(k), jnp.asarray(v), jnp.asarray(sees))
    target = 7
    labels = np.full((1, t + 1), -100, np.int32)
    labels[0, -1] = target
    batch = {"input_ids": np.concatenate([p_ids, [[target]]], 1), "attention_mask": np.concatenate([p_mask, [[1]]], 1),
             "labels": labels, "ref_ids": ids[None], "ref_mask": mask[None], "ref_valid": valid[None]}
    loss, n = m3.read_loss(base.decoder, {k: jnp.asarray(a) for k, a in batch.items()}, S.top_k)
    want = -jax.nn.log_softmax(logits[0])[target]
    assert int(n) == 1 and abs(float(loss) - float(want)) < 1e-4
    assert positions_from_mask(jnp.asarray(p_mask))[0, -1] == len(prompt) - 1


def stage_config(tmp_path, hf_dir, records, **extra):
    train = tmp_path / "train.jsonl"
    corpus.write_jsonl(records, train)
    overrides = [f"model.hf_dir={hf_dir}", f"data.jsonl_train={train}", f"data.jsonl_eval={train}",
                 "steps=8", "batch_size=4", "optim.lr=1e-2", "optim.warmup_steps=1", "log_every=1", "eval_every=8",
                 "eval_batches=1", "checkpoint_every=8", "tracker=none", "data.conversation_length=96",
                 "memory3.reference_tokens=24", "memory3.top_k=4", "memory3.memories=2", "memory3.lm_share=0.5",
                 "memory3.lm_docs=4", *extra]
    return load_config(f"{REPO}/configs/tiny.py:memory3_train", overrides)


def test_the_stage_lowers_its_loss_and_evaluation_reads_with_its_base(tok, small_hf, tmp_path, monkeypatch):
    from shine_jax.eval import retrieval, sentence_encoder
    from shine_jax.train.loop import run_stage

    for module in (sentence_encoder, retrieval):  # training's LM neighbours and evaluation's index: no MiniLM here
        monkeypatch.setattr(module, "SentenceEncoder", lambda: fake_embedder)
    records = corpus.build_corpus(0, 400, {"train": 8, "validation": 0, "test": 0})["train"]
    summary = run_stage(stage_config(tmp_path, small_hf, records), tmp_path / "w", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "w" / "memory3_train" / "metrics.jsonl").open()
              if "loss" in json.loads(line)]
    assert summary["val_loss"] < summary["initial_val_loss"] - 0.5 and np.mean(losses[-3:]) < losses[0] - 0.5
    final = tmp_path / "w" / m3.TRAINED

    # eval: the workdir's trained base is picked up, or named; "frozen" keeps the SHINE run's
    assert cli.memory3_base("", str(tmp_path / "w")) == str(final)
    assert cli.memory3_base("frozen", str(tmp_path / "w")) == "" == cli.memory3_base("", str(tmp_path))
    frozen = m3.load_reading_base(small_hf)
    shine = types.SimpleNamespace(base=frozen, max_evidence_length=256)
    settings = EvalSettings(memory3=dataclasses.replace(S, directory=str(tmp_path / "bank"), base=str(tmp_path / "w")))
    method = make_methods(["memory3"], settings, 256)[0]
    docs = [r["context"] for r in records[:2]]
    method.attach(None, fake_embedder, np.arange(2), False, docs)
    bank = method.prepare(shine, docs)  # the harness's first call: the bank is written by the reading base
    assert method.extra_results()["memory3"]["base"] == str(tmp_path / "w")
    assert json.loads((tmp_path / "bank" / m3.BANK_JSON).read_text())["base"] == str(final)
    trained = m3.load_reading_base(tmp_path / "w")
    texts = bank.index.texts
    np.testing.assert_array_equal(bank.keys, m3.encode_references(trained, texts, S)[0])
    assert not np.allclose(bank.keys, m3.encode_references(frozen, texts, S)[0])


def test_memory3_train_config_checks_and_other_stages_hashes():
    cfg = load_config(f"{REPO}/configs/tiny.py:memory3_train")
    assert cfg.model.source == "hf" and cfg.memory3.top_k == m3.Memory3Settings().top_k
    assert not any(k.startswith("memory3.") for k in trained_settings(load_config(f"{REPO}/configs/tiny.py:pretrain")))
    assert any(k.startswith("memory3.") for k in trained_settings(cfg))
    for override, match in (("memory3.top_k=0", "top-k"), ("memory3.lm_share=2.0", "lm_share"),
                            ("memory3.reference_tokens=300", "conversation_length")):
        with pytest.raises(ConfigError, match=match):
            load_config(f"{REPO}/configs/tiny.py:memory3_train", [override])
    with pytest.raises(ConfigError, match="must list stages from"):  # a side stage is no pipeline stage
        check_stages(("pretrain", "memory3_train"), "--stages")
    # the demo trains it for memory3 only where the config offers it
    assert side_stages(f"{REPO}/configs/tiny.py") == ("memory3_train",)
    assert side_stages(f"{REPO}/configs/smollm2_135m.py") == ()


def test_eval_refuses_a_memory3_base_that_is_no_folder(tmp_path, capsys):
    assert cli.main(["eval", "--workdir", str(tmp_path), "--data", str(tmp_path / "none.jsonl"), "--methods",
                     "memory3", "--memory3-base", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --memory3-base") and "not a folder" in err[0], err


def test_encoding_only_the_memory_layers_equals_reading_them_off_the_whole_stack(tok):
    """encode_memories runs the memory layers alone; the layer inputs of a full run_layers pass give the same keys
    and values (what the bank's encoder read before training shared it)."""
    cfg = dataclasses.replace(SMALL, num_layers=4)  # 2 memory layers of 4
    base = BaseModel.random(cfg, seed=2, tokenizer=tok)
    ids, mask, valid = m3.reference_rows(tok, ["Tamsin Halloran works as a potter.", "tiny"], S, 3)
    d = base.decoder
    keys, values = m3.encode_memories(d, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(valid), 2, S.top_k)
    x = d.embed_tokens(jnp.asarray(ids))
    _, streams, _ = d.run_layers(x, jnp.asarray(mask, bool), positions_from_mask(jnp.asarray(mask)),
                                 collect_last_n=ids.shape[1])
    for layer, h in enumerate([x, streams[:, 0]]):
        w = {n: a[layer] for n, a in d.layers.weights().items()}
        q, k, v = m3.attention_qkv(cfg, w, h)
        idx, ok = m3.select_tokens(q, k, jnp.asarray(valid), S.top_k)
        np.testing.assert_allclose(keys[:, layer], m3.keep_tokens(k, idx, ok), atol=1e-5)
        np.testing.assert_allclose(values[:, layer], m3.keep_tokens(v, idx, ok), atol=1e-5)
    assert not np.asarray(keys[2]).any()  # an empty row keeps nothing
