"""Length buckets: a left-padded batch cut to a bucket length gives the same loss and gradients as the full padded
batch (<= 1e-5 relative, float32), for the SHINE loss with and without the KL teacher and for the LM loss."""

import grain
import jax
import numpy as np
import pytest

from shine_jax.base_model import BaseModel
from shine_jax.data import buckets
from shine_jax.data.pipelines import left_pad
from shine_jax.sharding import make_mesh
from shine_jax.train import loop
from shine_jax.train.config import ConfigError, model_config
from tests.conftest import max_rel_err
from tests.train_utils import small_config

VOCAB = 96


def test_bucket_lengths():
    assert buckets.bucket_lengths(296, 4) == [80, 152, 224, 296]
    assert buckets.bucket_lengths(20, 8) == [8, 16, 20]  # multiples of 8, the full length last
    assert buckets.bucket_lengths(64, 1) == [64]


def _rows(lengths, full, seed):
    rng = np.random.default_rng(seed)
    rows = [left_pad(rng.integers(1, VOCAB, n), full, 0, rng.integers(1, VOCAB, n)) for n in lengths]
    return {k: np.stack([r[k] for r in rows]) for k in ("ids", "mask", "labels")}


def shine_batch(ctx_lengths, conv_lengths, full=(96, 112), teacher=None):
    ev, conv = _rows(ctx_lengths, full[0], 0), _rows(conv_lengths, full[1], 1)
    conv["labels"][:, : full[1] - 6] = -100  # answers: the last tokens
    batch = {"evidence_ids": ev["ids"], "evidence_mask": ev["mask"], "input_ids": conv["ids"],
             "attention_mask": conv["mask"], "labels": conv["labels"]}
    if teacher:  # the in-context teacher's row ends with the conversation (as pipelines.teacher_example)
        t = _rows([c + n for c, n in zip(ctx_lengths, conv_lengths)], teacher, 2)
        t["ids"][:, -full[1]:] = conv["ids"]
        batch.update(teacher_input_ids=t["ids"], teacher_attention_mask=t["mask"])
    return batch


def test_trim_cuts_leading_padding_to_a_bucket_and_keeps_rows_aligned():
    batch = shine_batch([10, 30], [20, 50], teacher=224)
    out = buckets.trim_batch(batch, 4)
    # buckets 24, 48, 72, 96 (evidence, longest 30) and 32, 56, 84, 112 (conversation, longest 50)
    assert out["evidence_ids"].shape == (2, 48) and out["input_ids"].shape == (2, 56)
    assert out["teacher_input_ids"].shape[-1] >= out["input_ids"].shape[-1]
    for k, v in out.items():  # only leading columns that were padding in every row went
        np.testing.assert_array_equal(v, batch[k][:, batch[k].shape[1] - v.shape[1]:])
        assert batch[k][:, : batch[k].shape[1] - v.shape[1]].max(initial=0) <= 0 or k == "labels"
    # the teacher is never shorter than the conversation it ends with
    short_teacher = buckets.trim_batch(shine_batch([2, 3], [100, 90], teacher=224), 2)
    assert short_teacher["teacher_input_ids"].shape[-1] >= short_teacher["input_ids"].shape[-1]
    # right padding (a real first column) is left whole
    right = {"input_ids": np.ones((2, 16), np.int32), "attention_mask": np.eye(2, 16, dtype=np.int32)}
    assert buckets.trim_batch(right, 4)["input_ids"].shape == (2, 16)
    with pytest.raises(ValueError, match="labels has length 15, but attention_mask has 16"):
        buckets.trim_batch(dict(right, labels=np.zeros((2, 15))), 4)


@pytest.mark.parametrize("loss", ["nll", "nll+kl"])
def test_bucketed_shine_loss_and_gradients_equal_the_padded_ones(loss):
    cfg = small_config("ift_mqa", 4, [f"shine.loss='{loss}'", "data.length_buckets=4"])
    base = BaseModel.random(model_config(cfg, VOCAB), seed=0)
    task = loop.shine_task(cfg, base, make_mesh((1, 1, 1)), workdir=None)
    batch = shine_batch([17, 40, 9, 33], [30, 12, 44, 25], (cfg.data.context_length, cfg.data.conversation_length),
                        teacher=(224 if loss != "nll" else None))
    trimmed = buckets.trim_batch(batch, cfg.data.length_buckets)
    assert trimmed["evidence_ids"].shape[-1] < batch["evidence_ids"].shape[-1]
    assert trimmed["input_ids"].shape[-1] < batch["input_ids"].shape[-1]
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: task.loss_fn(p, task.frozen, b)[0]))
    (l_full, g_full), (l_cut, g_cut) = value_and_grad(task.params, batch), value_and_grad(task.params, trimmed)
    assert abs(float(l_cut) - float(l_full)) <= 1e-5 * abs(float(l_full))
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g_full))
    for a, b in zip(jax.tree.leaves(g_cut), jax.tree.leaves(g_full)):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5 * scale
    # the loop cuts what it feeds the step, and counts the FLOPs of what it fed
    fed = loop.to_global(batch, cfg, make_mesh((1, 1, 1)))
    assert fed["input_ids"].shape[-1] == trimmed["input_ids"].shape[-1]
    assert task.batch_flops(fed) < task.step_flops


def test_bucketed_lm_loss_equals_the_padded_one():
    base = BaseModel.random(model_config(small_config("base_pretrain", 4), VOCAB), seed=0)
    rows = _rows([20, 7, 31], 128, 3)
    batch = {"input_ids": rows["ids"], "attention_mask": rows["mask"], "labels": rows["labels"]}
    trimmed = buckets.trim_batch(batch, 4)
    assert trimmed["input_ids"].shape[-1] == 32
    d = base.decoder
    full = d.lm_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
    cut = d.lm_loss(trimmed["input_ids"], trimmed["attention_mask"], trimmed["labels"])[0]
    assert max_rel_err(cut, full) <= 1e-5


@pytest.mark.parametrize("value", ["-1", "65", "1.5"])
def test_bad_bucket_counts_are_named(value):
    with pytest.raises(ConfigError, match="data.length_buckets"):
        small_config("ift_mqa", 4, [f"data.length_buckets={value}"])


def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        r = left_pad([i + 1] * int(rng.integers(1, 60)), 64, 0)  # the row's id is its token
        rows.append({"input_ids": r["ids"], "attention_mask": r["mask"]})
    return grain.MapDataset.source(rows)


def test_length_grouped_batches_cover_each_window_once_and_resume_exactly():
    ds = _examples(96)
    grouped = buckets.LengthGroupedBatches(ds, 4, 8, seed=3).dataset()
    assert len(grouped) == 24
    seen = [int(b["input_ids"][r].max()) - 1 for b in grouped for r in range(4)]
    assert sorted(seen[:32]) == list(range(32)) and sorted(seen) == list(range(96))  # each window: its own rows
    random_fed = sum(buckets.trim_batch(ds.batch(4)[i], 4)["input_ids"].size for i in range(24))
    grouped_fed = sum(buckets.trim_batch(grouped[i], 4)["input_ids"].size for i in range(24))
    assert grouped_fed < 0.85 * random_fed  # similar lengths together: less padding fed
    it = iter(grouped.to_iter_dataset())
    for _ in range(5):
        next(it)
    state = it.get_state()
    want = [next(it)["input_ids"] for _ in range(6)]  # crosses into the next window
    again = iter(buckets.LengthGroupedBatches(ds, 4, 8, seed=3).dataset().to_iter_dataset())
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["input_ids"], w)


@pytest.mark.parametrize("grouping", [0, 8])
def test_read_threads_change_neither_the_batches_nor_the_resume_point(grouping):
    """``data.read_threads`` only decides who makes a batch (threads ahead of the step, or the main thread when
    asked): the same batches in the same order, and a state saved with threads restores without them."""
    ds = _examples(96)
    plain = loop.batched_iterator(ds, 4, grouping, seed=3)
    threaded = loop.batched_iterator(ds, 4, grouping, seed=3, read_threads=3)
    for _ in range(7):
        np.testing.assert_array_equal(next(plain)["input_ids"], next(threaded)["input_ids"])
    state = threaded.get_state()
    want = [next(threaded)["input_ids"] for _ in range(5)]
    again = loop.batched_iterator(ds, 4, grouping, seed=3)
    again.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(again)["input_ids"], w)
