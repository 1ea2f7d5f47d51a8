"""The departures from SHINE offered against the hypernetwork's early plateau, each behind a flag whose default is
the official behaviour: symmetry-breaking inits, a memory-state norm before M2P, the KL context-distillation loss
(with its in-context teacher aligned to the student) and per-group learning-rate multipliers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from shine_jax.base_model import BaseModel
from shine_jax.convert.official import OfficialCheckpointError
from shine_jax.data import corpus, pipelines, prompts
from shine_jax.model.config import ModelConfig
from shine_jax.model.hypernet import HyperConfig, Hypernetwork
from shine_jax.model.losses import kl_distill_loss
from shine_jax.model.m2p import M2PConfig
from shine_jax.model.objective import shine_loss, teacher_logits
from shine_jax.shine import Shine
from shine_jax.train import loop
from shine_jax.train import optimizer as optim
from shine_jax.train.config import ConfigError, base_config, hyper_config, model_config, validate
from tests.conftest import ws
from tests.train_utils import small_config

MODEL = ModelConfig(family="llama", vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                    num_kv_heads=2, head_dim=32)


def hyper(seed=0, norm="none", **kw):
    cfg = HyperConfig(lora_rank=2, metalora_rank=4, m2p=M2PConfig(num_layers=2, num_heads=2, memory_norm=norm), **kw)
    return Hypernetwork(MODEL, cfg, nnx.Rngs(seed))


def pure(module):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))


# ------------------------------------------------------------------------------------------------- defaults
def test_defaults_are_official():
    c = base_config()
    assert (c.shine.mem_init, c.shine.m2p_pos_init, c.shine.m2p.memory_norm, c.shine.loss) == ("zeros", "zeros",
                                                                                         "none", "nll")
    assert (c.optim.mem_tokens_lr_mult, c.optim.m2p_lr_mult, c.optim.metalora_lr_mult) == (1.0, 1.0, 1.0)
    h = hyper_config(small_config("pretrain", 2))
    assert (h.mem_init, h.m2p_pos_init, h.m2p.memory_norm) == ("zeros", "zeros", "none")
    task = loop.shine_task(small_config("pretrain", 2), BaseModel.random(MODEL), _mesh(), workdir=None)
    assert task.lr_mults is None and task.eval_loss_fn is None and not task.teacher


def _mesh():
    from shine_jax.sharding import make_mesh

    return make_mesh((1, 1, 1))


# ------------------------------------------------------------------------------------------------- 1. inits
def test_official_init_is_exactly_zero():
    p = pure(hyper())
    for t in (p["mem_tokens"], p["m2p"]["token_pe"], p["m2p"]["layer_pe"]):
        assert not np.any(t)


def test_normal_init_breaks_symmetry_deterministically():
    normal = dict(mem_init="normal", m2p_pos_init="normal")
    p, again, other = pure(hyper(0, **normal)), pure(hyper(0, **normal)), pure(hyper(1, **normal))
    for t in (p["mem_tokens"], p["m2p"]["token_pe"], p["m2p"]["layer_pe"]):
        assert np.all(t != 0)
        assert len({row.tobytes() for row in t}) == len(t)  # every token (layer) differs from every other
        assert 0.015 < t.std() < 0.025  # std 0.02
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(again)))  # seed decides
    assert not np.array_equal(p["mem_tokens"], other["mem_tokens"])
    # drawn after everything else: the Meta LoRA and the M2P weights are those of the official init
    official = pure(hyper(0))
    np.testing.assert_array_equal(p["metalora"]["q"]["A"], official["metalora"]["q"]["A"])
    np.testing.assert_array_equal(p["m2p"]["layers"][0]["in_proj"], official["m2p"]["layers"][0]["in_proj"])
    only_mem = pure(hyper(0, mem_init="normal", mem_init_std=0.5))
    assert not np.any(only_mem["m2p"]["token_pe"]) and 0.4 < only_mem["mem_tokens"].std() < 0.6


def test_init_fields_reach_the_model_and_are_validated():
    cfg = small_config("pretrain", 2, ["shine.mem_init='normal'", "shine.m2p_pos_init='normal'",
                                       "shine.mem_init_std=0.1", "shine.m2p.memory_norm='rmsnorm'"])
    h = hyper_config(cfg)
    assert (h.mem_init, h.mem_init_std, h.m2p_pos_init, h.m2p.memory_norm) == ("normal", 0.1, "normal", "rmsnorm")
    for override, field in [("shine.mem_init='ones'", "shine.mem_init"),
                            ("shine.m2p_pos_init='x'", "shine.m2p_pos_init"),
                            ("shine.mem_init_std=0.0", "shine.mem_init_std"),
                            ("shine.m2p_pos_init_std=-1.0", "shine.m2p_pos_init_std"),
                            ("shine.m2p.memory_norm='batchnorm'", "shine.m2p.memory_norm"), ("shine.loss='mse'", "shine.loss"),
                            ("shine.kl_weight=0.0", "shine.kl_weight"),
                            ("optim.mem_tokens_lr_mult=0.0", "optim.mem_tokens_lr_mult"),
                            ("optim.m2p_lr_mult=-2.0", "optim.m2p_lr_mult"),
                            ("optim.metalora_lr_mult=0.0", "optim.metalora_lr_mult")]:
        with pytest.raises(ConfigError, match=f"config field '{field}'"):
            small_config("ift_mqa", 2, [override])


# ------------------------------------------------------------------------------------------------- 2. norm
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_memory_norm_normalises_each_memory_state(norm):
    h = hyper(norm=norm)
    states = jax.random.normal(jax.random.key(0), (2, MODEL.num_layers, h.num_tokens, 64)) * 3.0 + 0.5
    flat, outs = h.m2p(states, return_intermediates=True)
    x = np.asarray(states, np.float64)
    if norm == "layernorm":
        x = x - x.mean(-1, keepdims=True)
    want = x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + 1e-5)  # scale 1, zero position embeddings
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-5)
    # per layer, per token: rescaling one memory state does not move the output
    scaled = states.at[:, 1, 3].multiply(7.0)
    np.testing.assert_allclose(h.m2p(scaled), flat, rtol=1e-4, atol=1e-5)
    p = pure(h)
    assert np.array_equal(p["m2p"]["mem_norm_scale"], np.ones(64))
    assert optim.hypernet_group(["m2p", "mem_norm_scale"]) == "no_decay"  # with the M2P's LayerNorms


def test_official_export_refuses_a_norm_and_keeps_normal_inits(tmp_path):
    base = BaseModel.random(MODEL, seed=0)
    cfg = HyperConfig(lora_rank=2, metalora_rank=4, m2p=M2PConfig(num_layers=2, num_heads=2, memory_norm="rmsnorm"))
    with pytest.raises(OfficialCheckpointError, match="memory_norm='rmsnorm'.*cannot represent"):
        Shine.create(base, cfg).to_official(tmp_path / "normed")
    assert not (tmp_path / "normed").exists()
    cfg = HyperConfig(lora_rank=2, metalora_rank=4, m2p=M2PConfig(num_layers=2, num_heads=2), mem_init="normal",
                      m2p_pos_init="normal")
    shine = Shine.create(base, cfg, seed=3)
    shine.to_official(tmp_path / "normal")  # a normal init is only a value: representable
    back = Shine.from_official(tmp_path / "normal", None, m2p_heads=2, base=base)
    for key in ("mem_tokens",):
        np.testing.assert_array_equal(back.hyper_params()[key], shine.hyper_params()[key])
    np.testing.assert_array_equal(back.hyper_params()["m2p"]["token_pe"], shine.hyper_params()["m2p"]["token_pe"])


# ------------------------------------------------------------------------------------------------- 3. KL loss
def test_kl_loss_equals_a_float64_reference():
    rng = np.random.default_rng(0)
    b, t, v = 3, 9, 17
    student, teacher = rng.normal(size=(2, b, t, v)) * 2.0
    labels = rng.integers(0, v, (b, t))
    labels[rng.random((b, t)) < 0.4] = -100
    teacher_valid = np.ones((b, t), np.int32)
    teacher_valid[2] = 0  # a row without a teacher

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ls, lt = log_softmax(student[:, :-1]), log_softmax(teacher[:, :-1])
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    mask = (labels[:, 1:] != -100) & (teacher_valid[:, 1:] == 1)
    want = kl[mask].mean()
    got, n = kl_distill_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32),
                             jnp.asarray(labels), jnp.asarray(teacher_valid))
    assert int(n) == mask.sum() > 0
    assert abs(float(got) - want) <= 1e-6 * abs(want)
    same, _ = kl_distill_loss(jnp.asarray(student, jnp.float32), jnp.asarray(student, jnp.float32),
                              jnp.asarray(labels))
    assert abs(float(same)) < 1e-6


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from shine_jax.data.tokenizer import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512, num_docs=300)


@pytest.fixture(scope="module")
def records():
    return corpus.build_corpus(0, num_people=300, docs_per_split={"train": 24, "validation": 0, "test": 0})["train"]


@pytest.mark.parametrize("stage,ctx_len,conv_len", [("ift_mqa", 600, 400), ("ift_mqa", 300, 60), ("ift_1qa", 600, 32)])
def test_teacher_is_aligned_with_the_student(tok, records, stage, ctx_len, conv_len):
    """Teacher position j + (Tt - Tq) holds the student's token j at every labelled position, also where the
    student's conversation or evidence was cut; the teacher is the icl prompt (document, then the first question)."""
    data = small_config(stage, extra=[f"data.context_length={ctx_len}", f"data.conversation_length={conv_len}"]).data
    plain = pipelines.stage_dataset(stage, records, tok, data, seed=0, repeat=False)
    assert "teacher_input_ids" not in plain[0]  # the default batch is as before
    ds = pipelines.stage_dataset(stage, records, tok, data, seed=0, repeat=False, teacher=True)
    tt, tq = pipelines.teacher_length(ctx_len, conv_len), conv_len
    with_teacher = cut = truncated = 0
    for i in range(min(len(ds), 16)):
        ex = ds[i]
        for k in ("evidence_ids", "input_ids", "attention_mask", "labels"):
            np.testing.assert_array_equal(ex[k], plain[i][k])
        assert ex["teacher_input_ids"].shape == ex["teacher_attention_mask"].shape == (tt,)
        # masked out only when no label survived the conversation's cut
        assert ex["teacher_attention_mask"].any() == (ex["labels"] != -100).any()
        if not ex["teacher_attention_mask"].any():
            continue
        with_teacher += 1
        cut += bool(ex["attention_mask"][0])  # a full student row: its conversation was (probably) cut
        truncated += bool(ex["evidence_mask"][0])  # a full evidence row: the document was (probably) truncated
        labelled = np.nonzero(ex["labels"] != -100)[0]
        assert len(labelled)
        aligned = labelled + tt - tq
        assert np.all(ex["teacher_attention_mask"][aligned - 1] == 1)
        np.testing.assert_array_equal(ex["teacher_input_ids"][aligned], ex["labels"][labelled])
        teacher_text = ws(tok.decode(ex["teacher_input_ids"][ex["teacher_attention_mask"] == 1]))
        document = ws(tok.decode(ex["evidence_ids"][ex["evidence_mask"] == 1]))
        first_q = ws(tok.decode(ex["input_ids"][ex["attention_mask"] == 1])).split("<|im_end|>")[0]
        first_q = first_q.removeprefix("<|im_start|> user").strip()
        assert teacher_text.startswith(f"<|im_start|> user {document} Question: {first_q} <|im_end|>")
    assert with_teacher >= 8
    if conv_len == 60:
        assert cut > 0 and truncated > 0  # cut conversations and truncated documents kept their teacher


def test_truncated_teacher_is_masked_out_not_misaligned(tok, records):
    turns = pipelines.qa_turns(records[0])
    ids, labels = prompts.chat_turns(tok, turns)
    doc_len = len(prompts.encode_text(tok, records[0]["context"]))
    ok = pipelines.teacher_example(tok, records[0]["context"], turns, ids, labels, len(ids), doc_len + len(ids) + 8)
    assert ok["teacher_attention_mask"].sum() > len(ids)
    short = pipelines.teacher_example(tok, records[0]["context"], turns, ids, labels, len(ids), doc_len + len(ids) - 5)
    assert not short["teacher_attention_mask"].any() and short["teacher_input_ids"].shape == (doc_len + len(ids) - 5,)
    # a truncated evidence: the teacher reads the same truncated document the LoRA is generated from
    data = small_config("ift_1qa", extra=["data.context_length=20", "data.conversation_length=48"]).data
    ds = pipelines.stage_dataset("ift_1qa", records, tok, data, seed=0, repeat=False, teacher=True)
    for i in range(4):
        ex = ds[i]
        assert ex["evidence_mask"].all() and ex["teacher_attention_mask"].any()
        document = ws(tok.decode(ex["evidence_ids"]))
        assert ws(tok.decode(ex["teacher_input_ids"][ex["teacher_attention_mask"] == 1])).startswith(
            f"<|im_start|> user {document} Question:")


def test_kl_config_errors_name_the_field():
    for stage in ("base_pretrain", "pretrain"):
        with pytest.raises(ConfigError, match="config field 'shine.loss':.*stage " + stage):
            small_config(stage, 2, ["shine.loss='kl'"])
    with pytest.raises(ConfigError, match="config field 'shine.loss'"):
        small_config("pretrain", 2, ["shine.loss='nll+kl'"])
    for stage in ("ift_mqa", "ift_1qa"):
        assert small_config(stage, 2, ["shine.loss='nll+kl'", "shine.kl_weight=0.5"]).shine.loss == "nll+kl"
    cfg = small_config("ift_mqa", 2)
    cfg.stage = "pretrain"
    validate(cfg)
    cfg.shine.loss = "kl"
    with pytest.raises(ConfigError, match="'shine.loss'"):
        validate(cfg)


def _teacher_batch(cfg, b=4, vocab=96, seed=0):
    """Random student rows plus a teacher whose last Tq tokens are the student's; row 3 has no teacher."""
    from tests.train_utils import random_shine_batch

    batch = random_shine_batch(cfg, b, vocab, seed)
    tc, tq = cfg.data.context_length, cfg.data.conversation_length
    rng = np.random.default_rng(seed + 1)
    tid = np.concatenate([rng.integers(1, vocab, (b, tc + 16)), batch["input_ids"]], 1)
    tmask = np.ones((b, tc + 16 + tq), np.int32)
    tmask[:, :20] = 0
    tmask[3] = 0
    tid[3] = 0
    return dict(batch, teacher_input_ids=tid, teacher_attention_mask=tmask)


def test_kl_loss_and_its_gradients_on_a_tiny_model():
    cfg = small_config("ift_mqa", 4, ["shine.loss='kl'", "grad_accum=1", "optim.warmup_steps=0",
                                      "data.context_length=48", "data.conversation_length=40"])
    base = BaseModel.random(model_config(cfg, 96), seed=0)
    task = loop.shine_task(cfg, base, _mesh(), workdir=None)
    assert task.teacher and task.eval_loss_fn is not None
    batch = jax.tree.map(jnp.asarray, _teacher_batch(cfg))
    (loss, n), grads = jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, task.frozen, batch), has_aux=True))(
        task.params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    want_n = ((np.asarray(batch["labels"])[:, 1:] != -100) & (np.arange(4) != 3)[:, None]).sum()
    assert int(n) == want_n  # the row without a teacher is masked out
    g = jax.tree.map(np.asarray, grads)
    assert np.any(g["mem_tokens"]) and np.any(g["metalora"]["q"]["B"])
    assert all(np.any(x) for x in jax.tree.leaves(g["m2p"]["layers"]))
    # nll+kl = nll + w * kl; the validation loss is the NLL whatever the training loss
    nll, _ = jax.jit(task.eval_loss_fn)(task.params, task.frozen, batch)
    hgraph = Shine.create(base, hyper_config(cfg)).hyper_graphdef
    both, _ = jax.jit(lambda fr, pr: shine_loss(nnx.merge(base.graphdef, fr), nnx.merge(hgraph, pr), batch,
                                                "nll+kl", 0.25))(task.frozen, task.params)
    assert float(both) == pytest.approx(float(nll) + 0.25 * float(loss), rel=1e-5)


def test_teacher_gets_no_gradient():
    base = BaseModel.random(MODEL, seed=0)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 96, (2, 12)))
    mask = jnp.ones_like(ids)

    def f(state):
        return jnp.sum(teacher_logits(nnx.merge(base.graphdef, state), ids, mask, 5) ** 2)

    g = jax.grad(f)(base.state)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g))
    full = base.logits(ids, mask)
    np.testing.assert_allclose(teacher_logits(base.decoder, ids, mask, 5), full[:, -5:], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- 4. lr groups
def test_lr_multipliers_scale_each_group_only():
    params = {"mem_tokens": jnp.ones((2, 3)), "metalora": {"q": {"A": jnp.ones((3,))}},
              "m2p": {"token_pe": jnp.ones((3,)), "layers": {0: {"in_bias": jnp.ones((3,))}}}}
    grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    labels = optim.param_labels(params, optim.hypernet_group)
    opt = ml_collections.ConfigDict(dict(lr=0.1, warmup_steps=0, weight_decay=0.01, clip_norm=1.0, b1=0.9,
                                         b2=0.999, eps=1e-8))
    assert optim.lr_mults(params, lambda n: optim.hypernet_lr_mult(n, opt)) is None  # official: unchanged

    def update(**mults):
        cfg = ml_collections.ConfigDict(dict(opt, **mults))
        m = optim.lr_mults(params, lambda n: optim.hypernet_lr_mult(n, cfg))
        tx = optim.make_optimizer(cfg, 10, labels, m)
        return jax.tree.map(np.asarray, tx.update(grads, tx.init(params), params)[0])

    ref = update()
    got = update(mem_tokens_lr_mult=10.0, m2p_lr_mult=0.5, metalora_lr_mult=3.0)
    np.testing.assert_allclose(got["mem_tokens"], 10.0 * ref["mem_tokens"], rtol=1e-6)
    np.testing.assert_allclose(got["metalora"]["q"]["A"], 3.0 * ref["metalora"]["q"]["A"], rtol=1e-6)
    np.testing.assert_allclose(got["m2p"]["token_pe"], 0.5 * ref["m2p"]["token_pe"], rtol=1e-6)
    np.testing.assert_allclose(got["m2p"]["layers"][0]["in_bias"], 0.5 * ref["m2p"]["layers"][0]["in_bias"],
                               rtol=1e-6)
    cfg = small_config("pretrain", 2, ["optim.mem_tokens_lr_mult=10.0"])
    task = loop.shine_task(cfg, BaseModel.random(MODEL), _mesh(), workdir=None)
    assert task.lr_mults["mem_tokens"] == 10.0 and task.lr_mults["m2p"]["token_pe"] == 1.0


def test_with_shine_tokens_leaves_the_callers_tokenizer_alone():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from shine_jax.base_model import BaseModel
    from shine_jax.model.config import ModelConfig
    from shine_jax.shine import SPECIAL_TOKENS, with_shine_tokens

    words = ["<pad>", "<eos>", "a", "b", "c", "d"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    cfg = ModelConfig(family="llama", vocab_size=len(words), hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=2, head_dim=8)
    base = BaseModel.random(cfg, seed=0, tokenizer=tok)
    grown = with_shine_tokens(base)
    assert len(tok) == len(words) and base.cfg.vocab_size == len(words)  # unchanged
    assert len(grown.tokenizer) == grown.cfg.vocab_size == len(words) + len(SPECIAL_TOKENS)
    np.testing.assert_array_equal(grown.params()["embed"][: len(words)], base.params()["embed"])


def test_ift_1qa_carries_the_extra_meta_lora_of_ift_mqa(tmp_path):
    mqa_cfg = small_config("ift_mqa", 2, extra=["shine.extra_metalora_rank=4"])
    base = BaseModel.random(model_config(mqa_cfg, 96), seed=0)
    trained = Shine.create(base, hyper_config(mqa_cfg), seed=3)
    params = trained.hyper_params()
    params["extra_metalora"] = jax.tree.map(lambda a: np.full_like(a, 0.5), params["extra_metalora"])
    trained.set_hyper_params(params)
    trained.save(tmp_path / "mqa")
    one_cfg = small_config("ift_1qa", 2, extra=["shine.extra_metalora_rank=4", f"init_from='{tmp_path / 'mqa'}'"])
    task = loop.shine_task(one_cfg, base, _mesh(), workdir=tmp_path)
    for m, ab in task.params["extra_metalora"].items():
        for k in ("A", "B"):
            np.testing.assert_array_equal(np.asarray(ab[k]), 0.5, err_msg=f"extra_metalora/{m}/{k}")
