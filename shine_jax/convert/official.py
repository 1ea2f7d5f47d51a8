"""Official SHINE checkpoints (``mem_tokens.pt``, ``metanetwork.pth``, ``metalora.pth``) <-> our Hypernetwork.

Reading never executes pickled code: ``torch.load(weights_only=True)`` only rebuilds tensors, dicts, ints and
None, and raises on anything else. Writing reproduces what the official ``save_checkpoint`` writes (same file
names, keys, key order, shapes, float32, ``requires_grad`` leaves) so the official loader reads our files.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
from typing import Any

import numpy as np

from shine_jax.errors import UserError
from shine_jax.extras import require_torch
from shine_jax.fileutil import atomic_dir
from shine_jax.model.config import ModelConfig
from shine_jax.model.hypernet import HyperConfig, num_memory_tokens
from shine_jax.model.m2p import M2PConfig

MEM_TOKENS, M2P_FILE, METALORA, EXTRA_METALORA = ("mem_tokens.pt", "metanetwork.pth", "metalora.pth",
                                                 "ift_additional_metalora.pth")
GROUPS = {"q": "attention", "k": "attention", "v": "attention", "o": "attention",
          "gate": "mlp", "up": "mlp", "down": "mlp"}
# our EncoderLayer param -> (official key suffix, transpose)
ENCODER_MAP = {
    "in_proj": ("self_attn.in_proj_weight", True), "in_bias": ("self_attn.in_proj_bias", False),
    "out_proj": ("self_attn.out_proj.weight", True), "out_bias": ("self_attn.out_proj.bias", False),
    "linear1": ("linear1.weight", True), "bias1": ("linear1.bias", False),
    "linear2": ("linear2.weight", True), "bias2": ("linear2.bias", False),
    "norm1_scale": ("norm1.weight", False), "norm1_bias": ("norm1.bias", False),
    "norm2_scale": ("norm2.weight", False), "norm2_bias": ("norm2.bias", False),
}


class OfficialCheckpointError(UserError):
    """An official SHINE checkpoint that cannot be used: the message says what and why."""


# ----------------------------------------------------------------------------------------------------- read
def load_tensor_archive(path: pathlib.Path) -> Any:
    """``torch.load`` restricted to tensors/containers (no code execution), tensors -> numpy float32."""
    torch = require_torch("reading an official SHINE checkpoint")

    if not path.is_file():
        raise OfficialCheckpointError(f"{path} is missing; an official checkpoint holds {MEM_TOKENS}, {M2P_FILE}, {METALORA}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, forbidden globals: all mean "not a tensor archive"
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise OfficialCheckpointError(f"{path} is not a PyTorch tensor archive that loads safely ({first})") from None

    def to_numpy(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to(torch.float32).numpy().copy()
        if isinstance(x, dict):
            return type(x)((k, to_numpy(v)) for k, v in x.items()) if isinstance(x, collections.OrderedDict) \
                else {k: to_numpy(v) for k, v in x.items()}
        return x
    return to_numpy(obj)


def read_official(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    d = pathlib.Path(ckpt_dir)
    if not d.is_dir():
        raise OfficialCheckpointError(f"{d} is not a directory; pass an official SHINE checkpoint folder")
    raw = {"mem_tokens": load_tensor_archive(d / MEM_TOKENS), "m2p": load_tensor_archive(d / M2P_FILE),
           "metalora": load_tensor_archive(d / METALORA), "extra_metalora": None}
    if (d / EXTRA_METALORA).is_file():
        raw["extra_metalora"] = load_tensor_archive(d / EXTRA_METALORA)
    if not isinstance(raw["mem_tokens"], np.ndarray) or raw["mem_tokens"].ndim != 2:
        raise OfficialCheckpointError(f"{d / MEM_TOKENS} must hold one [M, H] tensor")
    if not isinstance(raw["m2p"], dict) or "layer_pe" not in raw["m2p"]:
        raise OfficialCheckpointError(f"{d / M2P_FILE} is not an M2P state_dict (no layer_pe)")
    return raw


def metalora_to_stacked(tree: dict, cfg: ModelConfig, where: str) -> dict:
    """Official ``{layer: {"attention"|"mlp": {m: {"A": [1,in,R], "B": [1,R,out], "C"}}}}`` -> ``[L, 1, ...]``."""
    if not isinstance(tree, dict) or sorted(tree) != list(range(cfg.num_layers)):
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise OfficialCheckpointError(f"{where}: layer keys {got} do not match the base model's {cfg.num_layers} layers")
    out = {}
    for m, (d_in, d_out) in cfg.module_dims().items():
        a = np.stack([tree[l][GROUPS[m]][m]["A"] for l in range(cfg.num_layers)])
        b = np.stack([tree[l][GROUPS[m]][m]["B"] for l in range(cfg.num_layers)])
        if a.shape[2] != d_in or b.shape[3] != d_out or a.shape[3] != b.shape[2]:
            raise OfficialCheckpointError(
                f"{where}: module {m} has A{a.shape[1:]} B{b.shape[1:]} per layer but the base model needs "
                f"A(1, {d_in}, R) B(1, R, {d_out})")
        out[m] = {"A": a, "B": b}
    return out


def m2p_from_state_dict(sd: dict, num_layers: int) -> dict:
    """Official M2P state_dict -> our M2P pure dict (transformer or linear variants)."""
    out = {"layer_pe": sd["layer_pe"], "token_pe": sd["token_pe"]}
    if any(k.startswith("transformer_layers.") for k in sd):
        out["layers"] = {i: {ours: (sd[f"transformer_layers.{i}.{key}"].T if t else sd[f"transformer_layers.{i}.{key}"])
                             for ours, (key, t) in ENCODER_MAP.items()} for i in range(num_layers)}
    else:
        out["weights"] = {i: sd[f"linear_layers.{i}.weight"].T for i in range(num_layers)}
        if "linear_layers.0.bias" in sd:
            out["biases"] = {i: sd[f"linear_layers.{i}.bias"] for i in range(num_layers)}
    return out


def count_m2p_layers(sd: dict) -> tuple[str, int]:
    idx = {int(m.group(2)): m.group(1) for k in sd if (m := re.match(r"(transformer_layers|linear_layers)\.(\d+)\.", k))}
    if not idx:
        raise OfficialCheckpointError("metanetwork.pth has no transformer_layers.* or linear_layers.* entries")
    kinds = set(idx.values())
    return ("transformer" if "transformer_layers" in kinds else "linear"), max(idx) + 1


# ----------------------------------------------------------------------------------------------------- write
def check_representable(memory_norm: str) -> None:
    """Refuse what the official files cannot hold. A ``normal`` init of the memory tokens or position embeddings
    is only their starting value (the files store the values), but a normalisation of the memory states is a
    step the official M2P does not have: its output would silently change."""
    if memory_norm != "none":
        raise OfficialCheckpointError(
            f"this SHINE normalises the memory states (memory_norm={memory_norm!r}), which the official M2P "
            "cannot represent; only memory_norm='none' models export to an official checkpoint")


def write_official(out_dir: str | os.PathLike, mem_tokens: np.ndarray, m2p: dict, metalora: dict,
                   extra_metalora: dict | None, cfg: ModelConfig, global_step: int = 0,
                   overwrite: bool = False) -> pathlib.Path:
    torch = require_torch("writing an official SHINE checkpoint")

    t = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
    with atomic_dir(out_dir, overwrite) as tmp:
        torch.save(torch.nn.Parameter(t(mem_tokens)), tmp / MEM_TOKENS)
        torch.save(m2p_to_state_dict(m2p, t), tmp / M2P_FILE)
        torch.save(stacked_to_metalora(metalora, cfg, t), tmp / METALORA)
        if extra_metalora is not None:
            torch.save(stacked_to_metalora(extra_metalora, cfg, t), tmp / EXTRA_METALORA)
        (tmp / "trainer_state.json").write_text(json.dumps({"global_step": global_step}, indent=2))
    return pathlib.Path(out_dir)


def m2p_to_state_dict(m2p: dict, t) -> collections.OrderedDict:
    sd = collections.OrderedDict(layer_pe=t(m2p["layer_pe"]), token_pe=t(m2p["token_pe"]))
    if "layers" in m2p:
        for i in sorted(m2p["layers"]):
            for ours, (key, transpose) in ENCODER_MAP.items():
                v = np.asarray(m2p["layers"][i][ours])
                sd[f"transformer_layers.{i}.{key}"] = t(v.T if transpose else v)
    else:
        for i in sorted(m2p["weights"]):
            sd[f"linear_layers.{i}.weight"] = t(np.asarray(m2p["weights"][i]).T)
            if "biases" in m2p and m2p["biases"]:
                sd[f"linear_layers.{i}.bias"] = t(m2p["biases"][i])
    return sd


def stacked_to_metalora(stacked: dict, cfg: ModelConfig, t) -> dict:
    out = {}
    for l in range(cfg.num_layers):
        out[l] = {"attention": {}, "mlp": {}}
        for m in cfg.module_dims():
            out[l][GROUPS[m]][m] = {"A": t(stacked[m]["A"][l]).requires_grad_(True),
                                    "B": t(stacked[m]["B"][l]).requires_grad_(True), "C": None}
    return out


def infer_hyper_config(raw: dict, cfg: ModelConfig, m2p_heads: int | None, scale: float, method: str,
                       layer_transformer_first: bool) -> HyperConfig:
    """The hypernetwork config of ``read_official``'s tensors on base ``cfg``: r, R, M2P depth and type from the
    shapes (checked against the base); what the files do not store (M2P heads, scale, reshape) from the caller."""
    mem = raw["mem_tokens"]
    where = "official checkpoint"
    if mem.shape[1] != cfg.hidden_size:
        raise OfficialCheckpointError(
            f"{where}: mem_tokens is {tuple(mem.shape)} but the base model has hidden size {cfg.hidden_size} "
            f"(expected (M, {cfg.hidden_size}))")
    per_rank = cfg.lora_params_per_layer(1)
    if (mem.shape[0] * cfg.hidden_size) % per_rank:
        raise OfficialCheckpointError(
            f"{where}: mem_tokens {tuple(mem.shape)} does not correspond to any LoRA rank of this base model "
            f"(M*H must be a multiple of {per_rank})")
    r = mem.shape[0] * cfg.hidden_size // per_rank
    pe = raw["m2p"]["layer_pe"]
    if pe.shape[0] != cfg.num_layers:
        raise OfficialCheckpointError(
            f"{where}: layer_pe is {tuple(pe.shape)} but the base model has {cfg.num_layers} layers "
            f"(expected ({cfg.num_layers}, {cfg.hidden_size}))")
    meta = metalora_to_stacked(raw["metalora"], cfg, "metalora.pth")
    extra = metalora_to_stacked(raw["extra_metalora"], cfg, "ift_additional_metalora.pth") \
        if raw["extra_metalora"] is not None else None
    kind, depth = count_m2p_layers(raw["m2p"])
    heads = m2p_heads or max(1, cfg.hidden_size // 128)  # official configs: M2P head dim 128
    m2p = M2PConfig(type=kind, num_layers=depth, num_heads=heads, layer_transformer_first=layer_transformer_first)
    hcfg = HyperConfig(lora_rank=r, metalora_rank=meta["q"]["A"].shape[-1],
                       extra_metalora_rank=0 if extra is None else extra["q"]["A"].shape[-1],
                       scale=scale, method=method, m2p=m2p)
    num_memory_tokens(cfg, hcfg)
    return hcfg


def official_to_params(raw: dict, cfg: ModelConfig) -> dict:
    """``read_official``'s tensors as the hypernetwork's parameter pytree."""
    params = {"mem_tokens": raw["mem_tokens"],
              "metalora": metalora_to_stacked(raw["metalora"], cfg, "metalora.pth"),
              "m2p": m2p_from_state_dict(raw["m2p"], count_m2p_layers(raw["m2p"])[1])}
    if raw["extra_metalora"] is not None:
        params["extra_metalora"] = metalora_to_stacked(raw["extra_metalora"], cfg, "ift_additional_metalora.pth")
    return params
