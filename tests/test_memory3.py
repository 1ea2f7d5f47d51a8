"""Memory3 (``shine_jax.eval.memory3``): token selection against float64 numpy, memory attention against dense
attention, retrieval, storage accounting, chunk-wise decoding against a step-by-step recomputation, the method in
the harness (own document and bank) and bad settings. The model is the shipped tiny base (4 layers: 2 memory
layers), or random layers made in the test."""

import functools
import json
import pathlib
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from shine_jax import cli
from shine_jax.base_model import BaseModel
from shine_jax.errors import InputError
from shine_jax.eval import memory3 as m3
from shine_jax.eval.harness import evaluate
from shine_jax.eval.methods import EvalSettings, make_methods
from shine_jax.eval.metrics import best_f1
from shine_jax.eval.retrieval import RetrievalSettings
from shine_jax.eval.sentence_encoder import SentenceEncoder
from shine_jax.model import layers as L
from shine_jax.model.config import ModelConfig
from shine_jax.model.decoder import attention_qkv, layer_forward
from shine_jax.shine import Shine

TINY_BASE = pathlib.Path(__file__).resolve().parents[1] / "models" / "tiny_base"
BANK = ["The Eiffel Tower stands in Paris. It was finished in 1889 for the world fair.",
        "Marra Tollvik works as a glassblower in Quenby. She was born in 1971 in Ostrel.",
        "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
        "tiny"]  # fewer tokens than top-k
SMALL = m3.Memory3Settings(reference_tokens=12, top_k=4, memories=2, interval=8)
GQA = ModelConfig(family="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8)  # 2 query heads per KV head, q/k norms


@pytest.fixture(scope="module")
def base():
    return BaseModel.from_hf(TINY_BASE)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(batch_size=8)


@pytest.fixture(scope="module")
def bank(base, encoder, tmp_path_factory):
    return m3.build_bank(base, BANK, encoder, SMALL, RetrievalSettings(), tmp_path_factory.mktemp("m3") / "bank")


def numpy_received(q, k, valid):
    """Float64: softmax(q.k / sqrt(d)) over valid keys, no mask, no positions, summed over valid queries and the
    query heads of each KV group -> [B, nkv, T]."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, t, nh, d = q.shape
    nkv = k.shape[2]
    out = np.zeros((b, nkv, t))
    for i in range(b):
        keys = np.flatnonzero(valid[i])
        for h in range(nh):
            g = h // (nh // nkv)
            s = q[i, :, h] @ k[i, keys, g].T / np.sqrt(d)  # [T, n]
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[i, g, keys] += (p * valid[i][:, None]).sum(0)
    return out


def test_top_k_selection_matches_float64_numpy():
    rng = np.random.default_rng(0)
    b, t, top_k = 3, 14, 5
    q = rng.normal(size=(b, t, 4, 8)).astype(np.float32)
    k = rng.normal(size=(b, t, 2, 8)).astype(np.float32)
    valid = np.ones((b, t), bool)
    valid[1, :3] = valid[1, -2:] = False  # a prefix and padding that are neither queries nor keys
    valid[2, 3:] = False  # 3 tokens: fewer than top-k
    ref = numpy_received(q, k, valid)
    np.testing.assert_allclose(m3.received_attention(q, k, valid), ref, rtol=1e-5)
    idx, ok = map(np.asarray, m3.select_tokens(q, k, valid, top_k))
    for i in range(2):
        for h in range(2):
            ranked = sorted(np.flatnonzero(valid[i]), key=lambda j: -ref[i, h, j])
            gap = ref[i, h, ranked[top_k - 1]] - ref[i, h, ranked[top_k]]
            assert gap > 1e-3, "near tie: the float32 ranking would prove nothing"
            assert list(idx[i, h]) == sorted(ranked[:top_k]) and ok[i, h].all()
    assert (idx[2, :, :3] == [0, 1, 2]).all() and (ok[2] == [True] * 3 + [False] * 2).all()


def test_memory_attention_equals_dense_attention():
    """Convention: a memory of a reference of n tokens keeping all of them has its keys at positions 0..n-1 (the
    reference's own order) and the context at n..n+T-1. Dense: the layer over [reference; context] at positions
    0..n+T-1, where the context rows see every reference token and the context causally. The context rows of both
    must agree (the memory's keys/values come from the same layer weights and reference inputs)."""
    cfg = GQA
    rng = np.random.default_rng(1)
    w = {name: jnp.asarray(rng.normal(0, 0.3, shape), jnp.float32) for name, shape in cfg.module_dims().items()}
    w |= {name: jnp.asarray(1 + 0.1 * rng.normal(size=size), jnp.float32) for name, size in
          (("attn_norm", cfg.hidden_size), ("mlp_norm", cfg.hidden_size), ("q_norm", cfg.head_dim),
           ("k_norm", cfg.head_dim))}
    n, t = 6, 5
    x_ref = jnp.asarray(rng.normal(size=(1, n, cfg.hidden_size)), jnp.float32)
    x_ctx = jnp.asarray(rng.normal(size=(1, t, cfg.hidden_size)), jnp.float32)

    @jax.jit
    def memory(x_ref):  # the memory layer's kept keys (before RoPE) and values of the reference, all n tokens
        q, k, v = attention_qkv(cfg, w, x_ref)
        idx, ok = m3.select_tokens(q, k, jnp.ones((1, n), bool), n)
        return idx, ok, m3.memory_kv(cfg, n, m3.keep_tokens(k, idx, ok)[None], m3.keep_tokens(v, idx, ok)[None],
                                     jnp.ones((1, t, n), bool))

    @jax.jit
    def layer(x, first_position, mask, extra):
        cos, sin = L.rope_cos_sin(first_position + jnp.arange(x.shape[1])[None], cfg.head_dim, cfg.rope_theta)
        return layer_forward(cfg, w, x, cos, sin, mask, (), None, 0, jnp.float32, extra)[0]

    idx, ok, (mk, mv, mmask) = memory(x_ref)
    assert (np.asarray(idx) == np.arange(n)).all() and np.asarray(ok).all()
    assert np.asarray(mmask[0]).all() and not np.asarray(mmask[1]).any()  # layer 1 is no memory layer
    causal = L.attention_mask(jnp.ones((1, t), bool), 0, t)
    with_memory = layer(x_ctx, n, causal, (mk[0], mv[0], mmask[0]))
    dense_mask = np.asarray(L.attention_mask(jnp.ones((1, n + t), bool), 0, n + t)).copy()
    dense_mask[:, n:, :n] = True
    dense = layer(jnp.concatenate([x_ref, x_ctx], 1), 0, jnp.asarray(dense_mask), None)
    np.testing.assert_allclose(with_memory, dense[:, n:], rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(layer(x_ctx, n, causal, None) - with_memory)).max() > 1e-2  # the memory is read


def test_retrieval_finds_the_planted_documents_reference(bank):
    hits = bank.search(["What is Marra Tollvik's occupation?", "When was the Eiffel Tower finished?"], 2)
    assert [int(bank.index.docs[h[0]]) for h in hits] == [1, 0]
    assert bank.index.texts[hits[0][0]].startswith("Marra Tollvik works as")
    # restricted to one document (the own-document setting), every hit is that document's
    only = bank.search(["What is Marra Tollvik's occupation?"], 2, only_docs=[2])[0]
    assert only and {int(bank.index.docs[h]) for h in only} == {2}


def test_storage_accounting_equals_the_stored_arrays(base, bank):
    meta = json.loads((bank.path / m3.BANK_JSON).read_text())
    lm, top_k = m3.memory_layers(base.cfg), SMALL.top_k
    assert meta["memory_layers"] == lm == 2 and len(meta["documents"]) == len(BANK) == bank.documents
    on_disk = arrays = 0
    for d, doc in enumerate(meta["documents"]):
        path = bank.path / doc["file"]
        raw = path.read_bytes()
        on_disk += len(raw) - 8 - int.from_bytes(raw[:8], "little")  # safetensors: u64 header size, header, data
        stored = load_file(str(path))
        arrays += sum(a.nbytes for a in stored.values())
        r = len(doc["references"])
        assert r == int((bank.index.docs == d).sum()) >= 1
        assert stored["keys"].shape == stored["values"].shape == (r, lm, top_k, base.cfg.num_kv_heads,
                                                                     base.cfg.head_dim)
    assert on_disk == arrays == bank.array_bytes
    short = len(base.tokenizer(BANK[-1], add_special_tokens=False)["input_ids"])
    assert short < top_k and bank.kept[-1] == short and (bank.kept[:-1] == top_k).all()  # "tiny" keeps them all
    # what was read back is what the encoder computed
    keys, values, kept = m3.encode_references(base, bank.index.texts[:3], SMALL)
    np.testing.assert_array_equal(bank.keys[:3], keys)
    np.testing.assert_array_equal(bank.values[:3], values)
    _, _, ok = bank.gather(np.array([[len(bank.index) - 1, -1]]))
    assert ok.tolist() == [[True] * short + [False] * (2 * top_k - short)]


def stepwise_reference(base, bank, prompt, max_new, retrieve, s):
    """Greedy decoding of one row without a cache: every step recomputes the whole sequence, each token reading its
    own chunk's memories (a prompt chunk queried with its prompt text, a later chunk with the chunk before)."""
    e = s.memories * s.top_k
    length = len(prompt) + max_new
    chunks = -(-length // s.interval)
    decoder = base.decoder
    eos = set(base.eos_ids().tolist())

    @jax.jit
    def last_logits(ids, n, keys, values, sees):
        valid = jnp.arange(length)[None] < n
        extra = m3.memory_kv(decoder.cfg, s.top_k, keys, values, sees)
        x, _, _ = decoder.run_layers(decoder.embed_tokens(ids), valid, s.top_k + jnp.arange(length)[None],
                                     extra_kv=extra)
        return decoder.project_logits(x[:, n - 1])[0]

    seq = list(prompt)
    while len(seq) < length:
        refs = np.full((1, chunks, s.memories), -1)
        for c in range(-(-len(seq) // s.interval)):
            start = c * s.interval if c * s.interval < len(prompt) else (c - 1) * s.interval
            text = base.tokenizer.decode((prompt if c * s.interval < len(prompt) else seq)[start:start + s.interval],
                                         skip_special_tokens=True)
            hits = retrieve([0], [text])[0]
            refs[0, c, :len(hits)] = hits
        keys, values, ok = bank.gather(refs.reshape(1, -1))
        chunk = np.where(np.arange(length) < len(seq), np.arange(length) // s.interval, -1)
        sees = (chunk[None, :, None] == np.repeat(np.arange(chunks), e)[None, None]) & ok[:, None]
        ids = np.zeros((1, length), np.int32)
        ids[0, :len(seq)] = seq
        seq.append(int(jnp.argmax(last_logits(ids, len(seq), keys, values, sees))))
        if seq[-1] in eos:
            break
    return seq[len(prompt):]


def test_chunkwise_decoding_equals_stepwise_recomputation(base):
    s = m3.Memory3Settings(top_k=3, memories=2, interval=4)
    layers, cfg = m3.memory_layers(base.cfg), base.cfg
    rng = np.random.default_rng(0)
    r = 6
    shape = (r, layers, s.top_k, cfg.num_kv_heads, cfg.head_dim)
    bank = m3.MemoryBank(None, rng.normal(0, 3, shape).astype(np.float32), rng.normal(0, 3, shape).astype(np.float32),
                         np.array([3, 3, 2, 3, 1, 3], np.int32), pathlib.Path("."), 0, 0)

    def retrieve(rows, texts):  # depends on the text only: each chunk its own memories
        return [[zlib.crc32(t.encode()) % r, (zlib.crc32(t.encode()) + 1) % r][: 1 + len(t) % 2] for t in texts]

    lengths, t, max_new = [5, 8, 11], 12, 9
    prompts = [rng.integers(20, cfg.vocab_size, n).tolist() for n in lengths]
    ids = np.zeros((4, t), np.int32)  # three rows and a padding row, left-padded
    mask = np.zeros((4, t), np.int32)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):], mask[i, t - len(p):] = p, 1
    mask[3, -1] = 1
    out = m3.generate(base, bank, ids, mask, 3, max_new, retrieve, s)
    pad = base.tokenizer.pad_token_id
    for i, p in enumerate(prompts):
        want = stepwise_reference(base, bank, p, max_new, retrieve, s)
        assert out[i, :len(want)].tolist() == want and (out[i, len(want):] == pad).all(), i
    assert (out[3] == pad).all()
    # the memories are read: one fixed memory for every chunk decodes otherwise
    assert not np.array_equal(out, m3.generate(base, bank, ids, mask, 3, max_new, lambda rows, texts: [[0]] * len(
        texts), s))


def test_memory3_in_the_harness_own_document_and_bank(base, tmp_path):
    # memory3 needs only the base (and the harness the document policy)
    shine = types.SimpleNamespace(base=base, max_evidence_length=256)
    shine.encode_evidence = functools.partial(Shine.encode_evidence, shine)
    records = [{"id": "a", "context": BANK[1],
                "qa": [{"question": "What is Marra Tollvik's job?", "answers": ["glassblower"]}]},
               {"id": "b", "context": BANK[2],
                "qa": [{"question": "What does photosynthesis make?", "answers": ["sugar and oxygen"]},
                       {"question": "What does it turn into sugar?", "answers": ["light, water and carbon dioxide"]}]}]
    settings = EvalSettings(batch_size=2, max_new_tokens=4,
                            memory3=m3.Memory3Settings(reference_tokens=16, top_k=4, memories=2, interval=16,
                                                       directory=str(tmp_path / "bank")))
    for bank in (None, [BANK[0], BANK[3]]):
        out = evaluate(shine, records, ["memory3"], settings, show_progress=False, bank=bank)
        assert ("retrieval" in out) == (bank is not None)  # rag's chunk index only where the bank must be routed
        res = out["methods"]["memory3"]
        for rec, pred in zip(records, res["predictions"]):
            f1s = [best_f1(a, qa["answers"]) for a, qa in zip(pred["answers"], rec["qa"])]
            assert len(f1s) == len(rec["qa"]) and all(np.isfinite(f) and 0 <= f <= 1 for f in f1s)
        info = res["memory3"]
        assert info["documents"] == 2 + len(bank or []) and info["tokens_kept_per_reference"] == 4
        if bank is None:  # restricted to the own document: every best reference is its own
            assert info["top1_reference_from_own_doc"] == 1.0
        files = sorted((tmp_path / "bank").glob("*.safetensors"))
        assert len(files) == info["documents"]
        data = sum(len(f.read_bytes()) - 8 - int.from_bytes(f.read_bytes()[:8], "little") for f in files)
        assert round(info["bytes_per_doc"] * info["documents"]) == data


@pytest.mark.parametrize("field,value,match", [("top_k", 0, "top-k"), ("memories", 0, "memories retrieved"),
                                                ("interval", 0, "retrieval interval"), ("top_k", 200, "more than")])
def test_bad_memory3_settings_are_one_line_errors(field, value, match):
    bad = m3.Memory3Settings(**{field: value})
    with pytest.raises(InputError, match=match):
        bad.check()
    with pytest.raises(InputError, match=match):  # before any model runs
        make_methods(["memory3"], EvalSettings(memory3=bad), 512)


def test_eval_cli_refuses_bad_memory3_options(tmp_path, capsys):
    for option, match in [("--memory3-top-k", "(top-k) must be >= 1"), ("--memory3-memories", "memories retrieved")]:
        assert cli.main(["eval", "--workdir", str(tmp_path), "--data", str(tmp_path / "none.jsonl"), "--methods",
                         "memory3", option, "0"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: memory3:") and match in err[0], err


def test_reading_with_other_settings_than_training_is_named(tmp_path):
    """training_mismatch names each memory3 setting that differs from the memory3_train stage's summary.json."""
    final = tmp_path / "memory3_train" / "final"
    final.mkdir(parents=True)
    settings = {"memory3.top_k": 8, "memory3.memories": 5, "memory3.reference_tokens": 128, "memory3.prefix": "Reference: "}
    (final.parent / "summary.json").write_text(json.dumps({"settings": settings}))
    assert m3.training_mismatch(tmp_path, m3.Memory3Settings()) is None  # a workdir or its final folder
    assert m3.training_mismatch(final, m3.Memory3Settings()) is None
    assert m3.training_mismatch(final, m3.Memory3Settings(top_k=4, memories=3)) == "top_k 8 -> 4, memories 5 -> 3"
    assert m3.training_mismatch(tmp_path / "elsewhere", m3.Memory3Settings(top_k=4)) is None  # no stage: no claim

