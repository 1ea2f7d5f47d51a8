"""A generated LoRA (one example of the batch) -> a PEFT LoRA adapter folder that PyTorch tools load as is.

PEFT adds ``lora_B(lora_A(x)) * lora_alpha / r``. Our update is ``x @ A @ B`` with SHINE's ``sqrt(scale)`` already
in both factors, so we write ``lora_alpha = r`` (scaling 1) and the factors transposed to torch layout
(``lora_A.weight [r, in] = A^T``, ``lora_B.weight [out, r] = B^T``): no value changes, the forward is reproduced
exactly. Only LoRA tensors are written (vLLM refuses adapters with other tensors); serve with
``--max-lora-rank`` >= r (vLLM accepts 8, 16, 32, 64, ...).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from safetensors.numpy import save_file

from shine_jax.errors import InputError
from shine_jax.fileutil import atomic_dir
from shine_jax.model.config import ModelConfig

HF_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
PEFT_FAMILIES = ("qwen3", "llama")


def peft_tensors(cfg: ModelConfig, lora: dict, index: int) -> dict[str, np.ndarray]:
    if cfg.family not in PEFT_FAMILIES:
        raise InputError(f"cannot name PEFT modules for model family {cfg.family!r}; supported: {', '.join(PEFT_FAMILIES)}")
    batch = next(iter(lora.values()))["A"].shape[1]
    if not -batch <= index < batch:
        raise InputError(f"index {index} is outside the LoRA batch of {batch} example(s)")
    out = {}
    for m, leaf in lora.items():
        a = np.asarray(leaf["A"], np.float32)[:, index]  # [L, in, r]
        b = np.asarray(leaf["B"], np.float32)[:, index]  # [L, r, out]
        for layer in range(cfg.num_layers):
            prefix = f"base_model.model.model.layers.{layer}.{HF_MODULES[m]}"
            out[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[layer].T)
            out[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[layer].T)
    return out


def adapter_config(cfg: ModelConfig, rank: int, modules, base_name: str) -> dict:
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
        "target_modules": sorted(HF_MODULES[m].split(".")[-1] for m in modules), "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "base_model_name_or_path": base_name, "revision": None,
    }


PROVENANCE = "shine_provenance.json"  # where an adapter came from; PEFT and vLLM ignore other files


def write_peft_adapter(cfg: ModelConfig, lora: dict, out_dir: str | os.PathLike, index: int = 0,
                       base_name: str = "", overwrite: bool = False, provenance: dict | None = None) -> pathlib.Path:
    tensors = peft_tensors(cfg, lora, index)
    rank = next(iter(lora.values()))["A"].shape[-1]
    with atomic_dir(out_dir, overwrite) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(cfg, rank, lora, base_name), indent=2))
        if provenance is not None:
            (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return pathlib.Path(out_dir)
