"""Architectures of public base models, for planning runs without their weights (``shine-jax plan``).

Numbers from the models' published ``config.json`` files."""

from shine_jax.model.config import ModelConfig

PRESETS = {
    "qwen3-0.6b": ModelConfig(family="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                              num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                              rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960),
    "qwen3-1.7b": ModelConfig(family="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                              num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                              rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=40960),
    "qwen3-8b": ModelConfig(family="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                            num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1e6,
                            rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=40960),
    "smollm2-135m": ModelConfig(family="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=1e5,
                                rms_norm_eps=1e-5, tie_word_embeddings=True, max_position_embeddings=8192),
}


ARCHITECTURE_FIELDS = ("family", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                       "num_kv_heads", "head_dim", "tie_word_embeddings")


def preset_mismatch(name: str, cfg: ModelConfig) -> str:
    """How ``cfg`` (a loaded model's) differs from preset ``name`` in its architecture ("" when it does not)."""
    want = PRESETS[name]
    return ", ".join(f"{f} {getattr(cfg, f)} (preset {getattr(want, f)})" for f in ARCHITECTURE_FIELDS
                     if getattr(cfg, f) != getattr(want, f))
