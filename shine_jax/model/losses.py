"""Training losses over a decoder's outputs: next-token NLL (whole logits, or chunked over the labelled positions
only) and KL context distillation. Positions are shifted the HF way: position t predicts token t+1."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

IGNORE = -100  # the label of a position without a loss (HF's ``ignore_index``)
LM_LOSS_CHUNK = 64  # positions per row in one LM-head chunk of ``chunked_lm_loss``

LOSSES = ("nll", "kl", "nll+kl")  # shine.loss: next-token NLL, KL context distillation, or both


def shifted_targets(labels: jax.Array) -> jax.Array:
    """``labels`` shifted left by one (position t predicts token t+1); the last position gets ``IGNORE``."""
    return jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE)], axis=1)


def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``-log softmax(logits)[target]`` per position, float32. The target logit is picked by a one-hot product, so
    the backward pass does not scatter into a ``[..., V]`` gradient."""
    logits = logits.astype(jnp.float32)
    picked = jnp.sum(logits * jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - picked


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """HF ``ForCausalLMLoss``: shift by one, cross-entropy over labels != -100, mean. Returns (loss, n_tokens).

    The labels are shifted rather than the logits, so the backward pass does not pad a ``[B, T, V]`` gradient (on
    CPU, that pad alone took 12 % of a base training step)."""
    targets = shifted_targets(labels)
    valid = targets != IGNORE
    nll = _token_nll(logits, jnp.where(valid, targets, 0))
    n = valid.sum()
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(n, 1), n


def chunked_lm_loss(hidden: jax.Array, project: Callable[[jax.Array], jax.Array], labels: jax.Array,
                    chunk: int = LM_LOSS_CHUNK) -> tuple[jax.Array, jax.Array]:
    """``causal_lm_loss(project(hidden), labels)`` without projecting the positions that carry no label.

    ``hidden`` ``[B, T, H]`` is the decoder's last residual stream and ``project`` maps ``[..., H]`` to logits
    ``[..., V]`` (final norm + LM head). In each row the labelled positions are gathered to the front (rows stay
    apart, so a batch-sharded input stays sharded); the rows are then cut into chunks of ``chunk`` positions and
    scanned. A chunk where no row has a label is skipped by ``lax.cond``, in the backward pass too, and a chunk's
    logits are recomputed in the backward pass instead of stored. So no ``[B, T, V]`` tensor is ever built, and the
    LM head costs in proportion to the most labelled row: answer-only batches (SHINE's conversations, the base's
    QA rows) label a small share of their tokens."""
    b, t, h = hidden.shape
    targets = shifted_targets(labels)
    valid = targets != IGNORE
    n = valid.sum()
    order = jnp.argsort(~valid, axis=1, stable=True)  # per row: labelled positions first, in order
    size = -(-t // chunk) * chunk

    def chunks(x):  # [B, T, ...] -> [T/chunk, B, chunk, ...], padded
        x = jnp.pad(x, ((0, 0), (0, size - t)) + ((0, 0),) * (x.ndim - 2))
        return jnp.swapaxes(x.reshape(b, size // chunk, chunk, *x.shape[2:]), 0, 1)

    xs = chunks(jnp.take_along_axis(hidden, order[..., None], axis=1))
    ts = chunks(jnp.take_along_axis(jnp.where(valid, targets, 0), order, axis=1))
    vs = chunks(jnp.take_along_axis(valid, order, axis=1))

    def chunk_sum(x, tgt, ok):
        return jnp.sum(jnp.where(ok, _token_nll(project(x), tgt), 0.0))

    # The skip test sits inside the checkpoint, so the scan keeps only the chunk's inputs for the backward pass.
    # With the checkpoint inside the cond, the cond passed the LM-head weight out as a residual and the scan
    # stacked it once per chunk: [T/chunk, H, V], 88 GiB in float32 for a Qwen3-8B conversation of 2,380 tokens.
    @jax.checkpoint
    def chunk_or_skip(x, tgt, ok):  # sorted: a chunk holds a label iff its first position does in some row
        skip = lambda *_: jnp.zeros((), jnp.float32)  # noqa: E731
        return jax.lax.cond(jnp.any(ok[:, 0]), chunk_sum, skip, x, tgt, ok)

    def body(total, c):
        return total + chunk_or_skip(*c), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, ts, vs))
    return total / jnp.maximum(n, 1), n


def kl_distill_loss(student_logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                    teacher_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Context distillation: KL(teacher || student) over the whole vocabulary at the positions that predict a
    label, averaged over them as ``causal_lm_loss`` averages its NLL; float32, no gradient into the teacher.

    Both logits are ``[B, T, V]`` and aligned position by position; ``teacher_valid`` ``[B, T]`` (optional) marks
    the positions where the teacher holds the same token as the student (its attention mask, aligned), so a
    row without a teacher contributes nothing. Returns (loss, n_positions)."""
    # masks shifted, logits whole: as in causal_lm_loss, the backward pass pads no [B, T, V] gradient
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), axis=-1)
    valid = shifted_targets(labels) != IGNORE
    if teacher_valid is not None:
        valid = valid & (shifted_targets(teacher_valid.astype(jnp.int32)) > 0)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    n = valid.sum()
    return jnp.sum(jnp.where(valid, kl, 0.0)) / jnp.maximum(n, 1), n
