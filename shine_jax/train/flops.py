"""Analytic FLOPs of one training step (matmuls only; 2 FLOPs per multiply-add)."""

from __future__ import annotations

from shine_jax.model.config import ModelConfig


def decoder_forward_flops(cfg: ModelConfig, tokens: int, seq_len: int, with_lm_head: bool) -> float:
    dims = cfg.module_dims()
    dense = sum(i * o for i, o in dims.values()) * cfg.num_layers
    attn = 2 * cfg.num_layers * seq_len * cfg.q_dim  # q.k^T and p.v per token, over the sequence
    head = cfg.hidden_size * cfg.vocab_size if with_lm_head else 0
    return 2.0 * tokens * (dense + attn + head)


def m2p_forward_flops(hidden: int, num_layers_model: int, mem_tokens: int, m2p_layers: int, ffn_mult: int) -> float:
    tokens = num_layers_model * mem_tokens
    per_token = 4 * hidden * hidden + 2 * ffn_mult * hidden * hidden  # qkv+out, ffn
    attn_len = (num_layers_model + mem_tokens) / 2  # layers alternate between the two axes
    return 2.0 * m2p_layers * tokens * (per_token + 2 * attn_len * hidden)


def shine_step_flops(cfg: ModelConfig, batch: int, ctx_len: int, conv_len: int, mem_tokens: int,
                     m2p_layers: int, ffn_mult: int, lora_rank: int) -> float:
    """Evidence pass and answer pass: forward + backward to activations (the base is frozen: ~2x forward);
    M2P: forward + full backward (3x forward)."""
    ev = decoder_forward_flops(cfg, batch * (ctx_len + mem_tokens), ctx_len + mem_tokens, False)
    ans = decoder_forward_flops(cfg, batch * conv_len, conv_len, True)
    lora = 2.0 * batch * conv_len * cfg.lora_params_per_layer(lora_rank) * cfg.num_layers
    m2p = m2p_forward_flops(cfg.hidden_size, cfg.num_layers, mem_tokens, m2p_layers, ffn_mult) * batch
    return 2 * ev + 2 * ans + 3 * lora + 3 * m2p


def lm_step_flops(cfg: ModelConfig, batch: int, seq_len: int) -> float:
    return 3 * decoder_forward_flops(cfg, batch * seq_len, seq_len, True)
