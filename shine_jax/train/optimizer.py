"""AdamW with the official parameter groups, warmup + linear decay, per-group gradient clipping.

Groups (SHINE_SPEC §7): ``decay`` = M2P weights and position embeddings (weight decay), ``no_decay`` = M2P biases
and LayerNorm parameters, ``meta`` = the Meta LoRA (weight decay) and — our addition — the memory tokens, which
the official multi-GPU trainer leaves out of every group. ``frozen`` parameters get zero updates. Each group is
clipped to ``clip_norm`` separately, as the official loop calls ``clip_grad_norm_`` once per group. Optional
learning-rate multipliers (``optim.{mem_tokens,m2p,metalora}_lr_mult``, not in SHINE) scale the updates of the
memory tokens, the M2P and the Meta LoRA without changing the groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

GROUPS = ("decay", "no_decay", "meta", "frozen")


def warmup_linear_decay(lr: float, warmup: int, total: int) -> Callable[[jax.Array], jax.Array]:
    """``get_linear_schedule_with_warmup``: 0 -> lr over ``warmup`` steps, then linearly to 0 at ``total``."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        up = step / max(warmup, 1)
        down = jnp.maximum(0.0, (total - step) / max(total - warmup, 1))
        return lr * jnp.where(step < warmup, up, down)
    return schedule


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def hypernet_group(names: list[str], train_mem_tokens: bool = True, freeze_metalora: bool = False) -> str:
    if names[0] == "mem_tokens":
        return "meta" if train_mem_tokens else "frozen"
    if names[0] == "metalora":
        return "frozen" if freeze_metalora else "meta"
    if names[0] == "extra_metalora":
        return "meta"
    leaf = names[-1]
    return "no_decay" if ("bias" in leaf or "norm" in leaf) else "decay"


def decoder_group(names: list[str]) -> str:
    return "no_decay" if "norm" in names[-1] else "decay"


def param_labels(params: Any, group_fn: Callable[[list[str]], str]) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, _: group_fn(_path_names(p)), params)


def hypernet_lr_mult(names: list[str], optim_cfg) -> float:
    """A hypernetwork parameter's learning-rate multiplier (``optim.*_lr_mult``)."""
    if names[0] == "mem_tokens":
        return float(optim_cfg.get("mem_tokens_lr_mult", 1.0))
    if names[0] in ("metalora", "extra_metalora"):
        return float(optim_cfg.get("metalora_lr_mult", 1.0))
    return float(optim_cfg.get("m2p_lr_mult", 1.0))


def lr_mults(params: Any, mult_fn: Callable[[list[str]], float]) -> Any:
    """Per-parameter lr multipliers, or None when all are 1 (then the optimizer is exactly the official one)."""
    mults = jax.tree_util.tree_map_with_path(lambda p, _: mult_fn(_path_names(p)), params)
    return None if all(m == 1.0 for m in jax.tree.leaves(mults)) else mults


def last_lr(optim_cfg, total_steps: int, opt_state: Any) -> float:
    """The learning rate of the optimizer's last applied update, read from its own step count (a skipped step
    does not advance it); 0 before the first update."""
    counts = [int(c) for path, c in optax.tree_utils.tree_get_all_with_path(opt_state, "count")
              if getattr(path[-1], "tuple_name", "") == "ScaleByScheduleState"]
    applied = max(counts, default=0)
    return float(warmup_linear_decay(optim_cfg.lr, optim_cfg.warmup_steps, total_steps)(applied - 1)) if applied else 0.0


def make_optimizer(optim_cfg, total_steps: int, labels: Any, mults: Any = None) -> optax.GradientTransformation:
    """``mults`` (a tree like ``labels`` of floats, see ``lr_mults``) scales each parameter's final update, which
    for AdamW (weight decay included) is the same as scaling its learning rate; the groups' clipping is unchanged."""
    schedule = warmup_linear_decay(optim_cfg.lr, optim_cfg.warmup_steps, total_steps)

    def adamw(wd):
        return optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm),
                           optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                                       weight_decay=wd))

    transforms = {"decay": adamw(optim_cfg.weight_decay), "no_decay": adamw(0.0),
                  "meta": adamw(optim_cfg.weight_decay), "frozen": optax.set_to_zero()}
    tx = optax.multi_transform(transforms, labels)
    if mults is None:
        return tx
    scale = optax.stateless(lambda updates, params=None: jax.tree.map(lambda u, m: u * m, updates, mults))
    return optax.chain(tx, scale)
