"""The jitted training step: gradient accumulation, non-finite steps skipped and counted, donated state.

The train state is a plain pytree ``{"params", "opt_state", "step", "skipped"}`` so that Orbax, optax and
``jax.jit`` shardings all see the same thing. ``loss_fn(params, frozen, batch) -> (loss, labelled_tokens)``
is the only task-specific piece (SHINE's hypernetwork loss, or the base model's LM loss).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[Any, Any, dict], tuple[jax.Array, jax.Array]]


def init_state(params: Any, tx: optax.GradientTransformation) -> dict:
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32)}


def train_state_shardings(tx: optax.GradientTransformation, params: Any, param_shardings: Any, mesh) -> dict:
    """Shardings of the whole train state: an optimizer leaf that mirrors a parameter (Adam's moments: same
    trailing key path, same shape) takes that parameter's sharding, so FSDP also shards the optimizer state;
    counters are replicated. Left to itself, XLA may replicate the zero-initialised moments on every device."""
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(mesh, PartitionSpec())
    by_path = {tuple(_key(k) for k in path): (np.shape(x), sh) for (path, x), sh in
               zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_shardings))}

    def pick(path, leaf):
        keys = []
        for k in reversed(path):  # the trailing dict/sequence keys are the parameter's own path
            if not isinstance(k, (jax.tree_util.DictKey, jax.tree_util.SequenceKey)):
                break
            keys.insert(0, _key(k))
        shape, sh = by_path.get(tuple(keys), (None, None))
        return sh if sh is not None and tuple(shape) == tuple(leaf.shape) else replicated

    opt = jax.tree_util.tree_map_with_path(pick, jax.eval_shape(tx.init, params))
    return {"params": param_shardings, "opt_state": opt, "step": replicated, "skipped": replicated}


def _key(k) -> str:
    return str(getattr(k, "key", getattr(k, "idx", k)))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation):
    """``step(state, frozen, batch) -> (state, metrics)``; batch leaves are ``[grad_accum, micro_batch, ...]``."""

    def step(state, frozen, batch):
        params = state["params"]
        n_micro = jax.tree.leaves(batch)[0].shape[0]

        def micro(carry, mb):
            grads_sum, loss_sum, tok_sum = carry
            (loss, ntok), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, mb)
            grads_sum = jax.tree.map(lambda a, g: a + g / n_micro, grads_sum, grads)
            return (grads_sum, loss_sum + loss / n_micro, tok_sum + ntok), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss, ntok), _ = jax.lax.scan(micro, (zeros, jnp.zeros(()), jnp.zeros((), jnp.int32)), batch)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (ntok > 0)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        new_state = {
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "step": state["step"] + 1,
            "skipped": state["skipped"] + (~ok).astype(jnp.int32),
        }
        metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": ntok, "skipped": (~ok).astype(jnp.int32)}
        return new_state, metrics

    return step


def make_eval_step(loss_fn: LossFn):
    def step(params, frozen, batch):
        def micro(carry, mb):
            loss, ntok = loss_fn(params, frozen, mb)
            return (carry[0] + loss * ntok, carry[1] + ntok), None
        (total, ntok), _ = jax.lax.scan(micro, (jnp.zeros(()), jnp.zeros((), jnp.int32)), batch)
        return total, ntok
    return step
