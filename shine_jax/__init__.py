"""shine_jax: SHINE (text -> LoRA in one forward pass) in JAX / Flax NNX.

    from shine_jax import BaseModel, Shine

The two public classes are imported lazily, so ``shine-jax`` sub-commands that must configure JAX before it
starts (``plan`` sets the fake device count) can import the package first.
"""

__all__ = ["BaseModel", "Shine"]


def __getattr__(name):
    if name == "BaseModel":
        from shine_jax.base_model import BaseModel

        return BaseModel
    if name == "Shine":
        from shine_jax.shine import Shine

        return Shine
    raise AttributeError(f"module 'shine_jax' has no attribute {name!r}")
