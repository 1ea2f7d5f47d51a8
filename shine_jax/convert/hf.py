"""Hugging Face folder (config.json + safetensors) <-> our decoder parameters.

One table maps each HF tensor name to our parameter and says how to transform it (HF linear weights are
``[out, in]``, ours ``[in, out]`` with a leading ``layers`` axis). Reading and writing use that one table, so
the round trip is bit-identical.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from shine_jax.errors import UserError
from shine_jax.fileutil import atomic_dir
from shine_jax.model.config import SUPPORTED_FAMILIES, ModelConfig

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja", "added_tokens.json", "generation_config.json")
_ARCH = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}

# our stacked name -> (HF per-layer suffix, is a linear weight to transpose)
LAYER_MAP = {
    "attn_norm": ("input_layernorm.weight", False),
    "q": ("self_attn.q_proj.weight", True),
    "k": ("self_attn.k_proj.weight", True),
    "v": ("self_attn.v_proj.weight", True),
    "o": ("self_attn.o_proj.weight", True),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "gate": ("mlp.gate_proj.weight", True),
    "up": ("mlp.up_proj.weight", True),
    "down": ("mlp.down_proj.weight", True),
}


class HFFormatError(UserError):
    """A Hugging Face folder we cannot read: the message says what is wrong."""


# ---------------------------------------------------------------------------------------------------- config
def read_hf_config(hf_dir: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Parse ``config.json`` into a ModelConfig; also return the raw dict (kept for a faithful export)."""
    path = pathlib.Path(hf_dir) / CONFIG_FILE
    if not pathlib.Path(hf_dir).is_dir():
        raise HFFormatError(f"{hf_dir} is not a directory; pass a Hugging Face model folder")
    if not path.is_file():
        raise HFFormatError(f"{hf_dir} has no {CONFIG_FILE}; is it a Hugging Face model folder?")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise HFFormatError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return config_from_hf_dict(raw, str(path)), raw


def config_from_hf_dict(raw: dict[str, Any], where: str = "config") -> ModelConfig:
    family = raw.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise HFFormatError(
            f"{where}: unsupported model_type {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise HFFormatError(f"{where}: attention/MLP biases are not supported (attention_bias/mlp_bias true)")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise HFFormatError(f"{where}: hidden_act {act!r} is not supported (only silu)")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        raise HFFormatError(f"{where}: rope_type {rope_type!r} is not supported (only default RoPE)")
    theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if k not in raw]
    if missing:
        raise HFFormatError(f"{where}: missing field(s) {', '.join(missing)}")
    heads = raw["num_attention_heads"]
    try:
        return ModelConfig(
            family=family,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            rope_theta=float(theta),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", family == "qwen3")),
            max_position_embeddings=raw.get("max_position_embeddings", 4096),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
        )
    except ValueError as e:
        raise HFFormatError(f"{where}: {e}") from None


def config_to_hf_dict(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """A config.json transformers understands (used when no original config.json is known)."""
    d = {
        "architectures": [_ARCH[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "dtype": dtype,
        "use_cache": True,
    }
    if cfg.family == "llama":
        d["mlp_bias"] = False
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(cfg, k) is not None:
            d[k] = getattr(cfg, k)
    return d


# ---------------------------------------------------------------------------------------------------- tensors
def read_safetensors(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded (index.json) safetensors checkpoint."""
    hf_dir = pathlib.Path(hf_dir)
    if (hf_dir / INDEX_FILE).is_file():
        index = json.loads((hf_dir / INDEX_FILE).read_text())
        files = sorted(set(index.get("weight_map", {}).values()))
        if not files:
            raise HFFormatError(f"{hf_dir / INDEX_FILE} has an empty weight_map")
    elif (hf_dir / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise HFFormatError(f"{hf_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}; the weights are missing")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        if not (hf_dir / name).is_file():
            raise HFFormatError(f"{hf_dir}: shard {name} listed in {INDEX_FILE} is missing (incomplete download?)")
        try:
            tensors.update(load_file(hf_dir / name))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise HFFormatError(f"{hf_dir / name} is not a readable safetensors file ({e})") from None
    return tensors


def hf_to_params(cfg: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """HF tensors -> ``{"embed", "final_norm", ["lm_head"], "layers": {name: [L, ...]}}`` (numpy)."""
    expected = expected_hf_shapes(cfg)
    missing = sorted(k for k in expected if k not in tensors)
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise HFFormatError(f"checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:3])}{more}")
    ignorable = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
    unexpected = sorted(k for k in tensors if k not in expected and k not in ignorable
                        and not k.endswith("rotary_emb.inv_freq"))
    if unexpected:
        raise HFFormatError(f"checkpoint has tensor(s) the config does not describe: {', '.join(unexpected[:3])}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise HFFormatError(f"tensor {k} has shape {tuple(tensors[k].shape)} but the config implies {shape}")
    params: dict[str, Any] = {
        "embed": tensors["model.embed_tokens.weight"],
        "final_norm": tensors["model.norm.weight"],
        "layers": {},
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = tensors["lm_head.weight"].T
    for ours, (suffix, transpose) in _layer_map(cfg).items():
        per_layer = [tensors[f"model.layers.{i}.{suffix}"] for i in range(cfg.num_layers)]
        params["layers"][ours] = np.stack([w.T if transpose else w for w in per_layer])
    return params


def params_to_hf(cfg: ModelConfig, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_params`."""
    out = {
        "model.embed_tokens.weight": np.asarray(params["embed"]),
        "model.norm.weight": np.asarray(params["final_norm"]),
    }
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = np.asarray(params["lm_head"]).T
    for ours, (suffix, transpose) in _layer_map(cfg).items():
        stacked = np.asarray(params["layers"][ours])
        for i in range(cfg.num_layers):
            out[f"model.layers.{i}.{suffix}"] = stacked[i].T if transpose else stacked[i]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h = cfg.hidden_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    dims = cfg.module_dims()
    for i in range(cfg.num_layers):
        for ours, (suffix, transpose) in _layer_map(cfg).items():
            if transpose:
                d_in, d_out = dims[ours]
                shape = (d_out, d_in)
            else:
                shape = (cfg.head_dim,) if ours in ("q_norm", "k_norm") else (h,)
            shapes[f"model.layers.{i}.{suffix}"] = shape
    return shapes


def _layer_map(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
    return {k: v for k, v in LAYER_MAP.items() if cfg.qk_norm or k not in ("q_norm", "k_norm")}


# ---------------------------------------------------------------------------------------------------- writing
def write_hf_folder(out_dir: str | os.PathLike, hf_config: dict[str, Any], tensors: dict[str, np.ndarray],
                    tokenizer_dir: str | os.PathLike | None = None, overwrite: bool = False,
                    max_shard_bytes: int = 2 * 1024**3) -> pathlib.Path:
    """Write config.json + safetensors (sharded with an index above ``max_shard_bytes``) + tokenizer files.

    The folder is assembled in a temporary sibling and renamed into place, so nothing half-written remains.
    """
    with atomic_dir(out_dir, overwrite) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        shards = _split_shards(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(tensors, str(tmp / SINGLE_FILE), metadata={"format": "pt"})
        else:
            weight_map = {}
            for n, shard in enumerate(shards, 1):
                name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(tmp / name), metadata={"format": "pt"})
                weight_map.update({k: name for k in shard})
            total = sum(v.nbytes for v in tensors.values())
            (tmp / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2))
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
    return pathlib.Path(out_dir)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def _split_shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k, v in tensors.items():
        if shards[-1] and size + v.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    return shards
