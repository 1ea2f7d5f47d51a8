"""Optional dependencies: PyTorch (official checkpoints, the SmolLM2 GGUF import, parity tests) is the ``[torch]``
extra, so the JAX install stays lean; asking for it without it installed is one clear error."""

from __future__ import annotations

from types import ModuleType

from shine_jax.errors import UserError


class MissingExtraError(UserError):
    """An optional dependency the requested feature needs is not installed."""


def require_torch(purpose: str) -> ModuleType:
    try:
        import torch
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs PyTorch, which is not installed: pip install -e '.[torch]' (see README, Setup)"
        ) from None
    return torch
