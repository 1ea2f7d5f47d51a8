"""Device mesh and logical-axis sharding rules.

Every parameter and activation in shine_jax names its dimensions with *logical* axes (``embed``, ``mlp``, ...).
One rules table maps them to the physical mesh axes ``("data", "fsdp", "tensor")``. Changing how a model is
sharded means changing the table, never the model code.

Mesh axes are created as ``AxisType.Auto`` on purpose: the decoder is a scanned stack of einsums and the jitted
steps pin their inputs and outputs with ``in_shardings``/``out_shardings``; Auto axes let XLA propagate shardings
through the scan body without annotating every intermediate, which Explicit axes would require.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from shine_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",  # flattened query heads x head_dim
    "kv_heads": "tensor",  # flattened kv heads x head_dim
    "mlp": "tensor",
    "layers": None,
    "lora_rank": None,
    "mem_tokens": None,
    "head_dim": None,
    "length": None,
    "m2p_embed": "fsdp",
    "m2p_mlp": "tensor",
    "m2p_qkv": "tensor",
}


def make_mesh(shape: Sequence[int] = (1, 1, 1), devices=None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh with Auto axes; ``-1`` in one slot takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 3:
        raise InputError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {tuple(shape)}")
    if shape.count(-1) > 1:
        raise InputError(f"mesh shape {tuple(shape)}: at most one entry may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise InputError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise InputError(
            f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are available; "
            "make data*fsdp*tensor equal the device count (or use -1 for one axis)"
        )
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None,
    warn: bool = False,
) -> P:
    """PartitionSpec for logical axis ``names``.

    When ``shape`` and ``mesh`` are given, a mesh axis that does not divide its dimension (or that an earlier
    dimension already uses) is dropped, so odd sizes (9 heads, a vocabulary of 49 152 on 5 devices) replicate
    instead of failing; ``warn`` (parameters) says so, since a replicated weight costs memory on every device.
    """
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        rule = LOGICAL_RULES.get(name) if name is not None else None
        axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
        kept = []
        for ax in axes:
            if ax in used:
                continue
            if mesh is not None and shape is not None:
                size = mesh.shape[ax]
                if shape[i] % (size * math.prod(mesh.shape[a] for a in kept)):
                    if warn and size > 1:
                        warnings.warn(f"sharding: mesh axis {ax!r} ({size} devices) does not divide dimension {i} "
                                      f"({shape[i]}) of a parameter with logical axes {tuple(names)}; that dimension "
                                      f"is replicated along {ax!r}", stacklevel=3)
                    continue
            kept.append(ax)
        used.update(kept)
        spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    """The sharding of a parameter: its logical axes on ``mesh``, with a warning for each mesh axis dropped."""
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, warn=True))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Shard the leading (batch) dimension over data x fsdp, everything else replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape, mesh))


def constrain(x, names: Sequence[str | None]):
    """Pin an activation to its logical sharding when a mesh is set (``jax.set_mesh``); a no-op otherwise.

    Auto axes leave activation layouts to XLA, which on a large FSDP mesh can pick replicated activations (the
    compile-only plan of Qwen3-8B showed 470 GiB of temporaries per device without these constraints)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
