"""``BaseModel``: the user-facing frozen base LLM (load from HF, logits, KV-cache generation, sharding, export)."""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shine_jax import checkpoints, multihost
from shine_jax import sharding as shd
from shine_jax.checkpoints import BaseOrigin
from shine_jax.convert import hf as hfconv
from shine_jax.data import prompts
from shine_jax.data.hf_tokenizer import Tokenizer, is_tokenizer_folder
from shine_jax.errors import InputError
from shine_jax.model import layers as L
from shine_jax.model import sampler
from shine_jax.model.config import ModelConfig
from shine_jax.model.decoder import AXES_KEY, Decoder
from shine_jax.model.lora import check_lora
from shine_jax.model.lora import logical_axes as lora_axes

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(name) -> Any:
    if name is None or not isinstance(name, str):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def build_decoder(cfg: ModelConfig, params: dict | None = None, *, seed: int = 0, param_dtype="float32",
                  dtype="float32", remat: bool = False, attention: str = "reference") -> Decoder:
    """A Decoder with the given parameters (nested dict of arrays) or a random init when ``params`` is None."""
    make = functools.partial(Decoder, cfg, param_dtype=as_dtype(param_dtype), dtype=as_dtype(dtype), remat=remat,
                             attention=attention)
    if params is None:
        return make(rngs=nnx.Rngs(seed))
    abstract = nnx.eval_shape(lambda: make(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pd = as_dtype(param_dtype)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, pd), params))
    return nnx.merge(graphdef, state)


def state_shardings(state: nnx.State, mesh) -> Any:
    """NamedSharding for every Variable of ``state`` from its ``logical_axes`` metadata."""
    def one(var):
        value = var.get_value()  # an array, or a ShapeDtypeStruct for abstract (planning) state
        axes = var.get_metadata().get(AXES_KEY) or (None,) * len(value.shape)
        return var.replace(shd.named_sharding(mesh, axes, value.shape))
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def lora_shardings(lora: dict, mesh) -> dict:
    return {m: {f: shd.named_sharding(mesh, lora_axes(m, f), lora[m][f].shape) for f in lora[m]} for m in lora}


class BaseModel:
    """A frozen decoder plus (optionally) its tokenizer and the HF config it came from."""

    def __init__(self, decoder: Decoder, tokenizer=None, hf_config: dict | None = None,
                 origin: BaseOrigin | None = None):
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.hf_config = hf_config
        self.origin = origin  # the folder these exact weights came from (None: built or changed in memory)
        self.mesh = None
        self._graphdef, self._state = nnx.split(decoder)

    # -- construction ------------------------------------------------------------------------------------
    @property
    def cfg(self) -> ModelConfig:
        return self.decoder.cfg

    # the functional split of the decoder, what jitted functions take (read-only: use set_params/shard to change)
    @property
    def graphdef(self) -> nnx.GraphDef:
        return self._graphdef

    @property
    def state(self) -> nnx.State:
        return self._state

    @classmethod
    def from_hf(cls, hf_dir: str | os.PathLike, dtype: str = "float32", compute_dtype: str | None = None,
                load_tokenizer: bool = True, remat: bool = False) -> BaseModel:
        """Read ``config.json`` + safetensors (single or sharded) of a Qwen3 or LLaMA-family model."""
        cfg, raw = hfconv.read_hf_config(hf_dir)
        params = hfconv.hf_to_params(cfg, hfconv.read_safetensors(hf_dir))
        decoder = build_decoder(cfg, params, param_dtype=dtype, dtype=compute_dtype or dtype, remat=remat)
        tokenizer = load_tokenizer_from(hf_dir) if load_tokenizer else None
        return cls(decoder, tokenizer, raw, BaseOrigin("hf", pathlib.Path(hf_dir).absolute()))

    @classmethod
    def random(cls, cfg: ModelConfig, seed: int = 0, dtype: str = "float32", tokenizer=None) -> BaseModel:
        return cls(build_decoder(cfg, seed=seed, param_dtype=dtype, dtype=dtype), tokenizer)

    def params(self) -> dict:
        """Parameters as a nested dict of numpy arrays (the layout ``hf_to_params`` produces)."""
        return jax.tree.map(np.asarray, nnx.to_pure_dict(self._state))

    def set_remat(self, remat: bool) -> None:
        """Rematerialise the layer scan in the backward pass (same numbers, less memory). ``remat`` is a static
        attribute of the decoder, so the graph is split again (setting the attribute alone would not reach the
        jitted functions, which merge ``_graphdef``)."""
        self.decoder.remat = remat
        self._resplit()

    def set_attention(self, attention: str) -> None:
        """Which attention path the layers run (``layers.ATTENTION_IMPLS``; the same numbers). Static, like remat."""
        self.decoder.attention = L.check_attention(attention)
        self._resplit()

    def set_param_dtype(self, dtype: str) -> None:
        """Store the weights in ``dtype`` (e.g. bfloat16 for a frozen base; the compute dtype is unchanged). The
        weights are rounded once here; the layers cast them to the compute dtype as they use them."""
        target = as_dtype(dtype)
        self._state = jax.tree.map(lambda a: a.astype(target) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                   self._state)
        self._resplit()

    def _resplit(self) -> None:
        nnx.update(self.decoder, self._state)
        self._graphdef, self._state = nnx.split(self.decoder)

    def set_params(self, params: dict) -> None:
        self.origin = None  # no folder holds these weights any more
        nnx.replace_by_pure_dict(self._state, params)
        nnx.update(self.decoder, self._state)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
        """Our own format: ``model.json`` (architecture + original HF config), Orbax params, tokenizer files.

        With several processes (multi-host) every process must call it, each with its own local ``path``: the
        parameters are gathered and every host gets a complete copy (see ``shine_jax.multihost``)."""
        state = self.host_params()
        out = multihost.write_on_every_host(path, lambda p: self.write_local(p, state, overwrite), overwrite)
        self.origin = BaseOrigin("shine_jax", pathlib.Path(out).absolute())  # these weights now live there
        return out

    def host_params(self) -> dict:
        """The parameters to save: as they are with one process, gathered numpy arrays with several."""
        state = nnx.to_pure_dict(self._state)
        return multihost.to_host(state) if jax.process_count() > 1 else state

    def write_local(self, path: pathlib.Path, state: dict, overwrite: bool) -> None:
        """Write this model's folder at ``path`` on this host from ``state`` (``host_params()``); with several
        processes every host calls it (``save`` does this through ``multihost.write_on_every_host``)."""
        from shine_jax.fileutil import atomic_dir

        with atomic_dir(path, overwrite) as tmp:
            checkpoints.write_model_meta(tmp, self.cfg.to_dict(), self.hf_config, str(state["embed"].dtype))
            with multihost.local_checkpointer() as ckptr:
                ckptr.save(tmp / checkpoints.PARAMS_DIR, state)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(tmp / checkpoints.TOKENIZER_DIR))

    @classmethod
    def open(cls, path: str | os.PathLike, compute_dtype: str | None = None) -> BaseModel:
        """A Hugging Face folder (``config.json``) or else a shine_jax model folder (``model.json``)."""
        if (pathlib.Path(path) / "config.json").is_file():
            return cls.from_hf(path, compute_dtype=compute_dtype)
        return cls.load(path, compute_dtype=compute_dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str | None = None, compute_dtype: str | None = None) -> BaseModel:
        path = pathlib.Path(path).absolute()
        meta = checkpoints.read_model_meta(path)
        cfg = ModelConfig.from_dict(meta["model"])
        params = multihost.restore(path / checkpoints.PARAMS_DIR)
        dtype = dtype or meta.get("param_dtype", "float32")
        decoder = build_decoder(cfg, params, param_dtype=dtype, dtype=compute_dtype or dtype)
        return cls(decoder, load_tokenizer_from(path / checkpoints.TOKENIZER_DIR), meta.get("hf_config"),
                   BaseOrigin("shine_jax", path))

    def to_hf(self, out_dir: str | os.PathLike, overwrite: bool = False, tokenizer_dir=None) -> pathlib.Path:
        """Write an HF folder (config.json, safetensors, tokenizer files) that transformers loads."""
        tensors = hfconv.params_to_hf(self.cfg, self.params())
        dtype = str(next(iter(tensors.values())).dtype)
        hf_config = dict(self.hf_config) if self.hf_config else hfconv.config_to_hf_dict(self.cfg, dtype)
        if tokenizer_dir is not None or self.tokenizer is None:
            return hfconv.write_hf_folder(out_dir, hf_config, tensors, tokenizer_dir, overwrite)
        import tempfile

        # the in-memory tokenizer, not its source folder: SHINE may have added tokens to it
        with tempfile.TemporaryDirectory() as tok_dir:
            self.tokenizer.save_pretrained(tok_dir)
            return hfconv.write_hf_folder(out_dir, hf_config, tensors, tok_dir, overwrite)

    # -- sharding ----------------------------------------------------------------------------------------
    def shard(self, mesh) -> BaseModel:
        """Place the parameters on ``mesh`` following the logical-axis rules; later calls run sharded."""
        self.mesh = mesh
        self._state = jax.device_put(self._state, state_shardings(self._state, mesh))
        nnx.update(self.decoder, self._state)
        return self

    def put_batch(self, *arrays):
        """The arrays on the device(s), batch-sharded over the model's mesh when it has one."""
        if self.mesh is None:
            return tuple(jnp.asarray(a) for a in arrays)
        return tuple(jax.device_put(jnp.asarray(a), shd.batch_sharding(self.mesh, np.shape(a))) for a in arrays)

    def _put_loras(self, loras: Sequence[dict]):
        if self.mesh is None:
            return tuple(loras)
        return tuple(jax.device_put(l, lora_shardings(l, self.mesh)) for l in loras)

    # -- compute -----------------------------------------------------------------------------------------
    def _check_inputs(self, input_ids, attention_mask, lora) -> tuple[dict, ...]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
        if attention_mask is not None and np.shape(attention_mask) != ids.shape:
            raise ValueError(f"attention_mask shape {np.shape(attention_mask)} != input_ids shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got {ids.min()}..{ids.max()}")
        loras = () if lora is None else (lora,) if isinstance(lora, dict) else tuple(lora)
        for n, l in enumerate(loras):
            check_lora(self.cfg, l, ids.shape[0], what=f"lora[{n}]" if len(loras) > 1 else "lora")
        return loras

    def logits(self, input_ids, attention_mask=None, lora=None, positions=None) -> jax.Array:
        """Logits ``[B, T, V]`` (float32). ``lora``: None, one LoRA pytree, or a sequence of them (summed)."""
        loras = self._check_inputs(input_ids, attention_mask, lora)
        if attention_mask is None:
            attention_mask = np.ones(np.shape(input_ids), np.int32)
        ids, mask = self.put_batch(input_ids, attention_mask)
        pos = None if positions is None else self.put_batch(positions)[0]
        return _logits_fn(self._graphdef, self._state, ids, mask, pos, self._put_loras(loras))

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, lora=None,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None) -> np.ndarray:
        """KV-cache generation for a left-padded batch: greedy at ``temperature=0``, else temperature/top-p
        sampling. Returns ``[B, max_new_tokens]`` new ids; after a row's EOS the rest is ``pad_token_id``."""
        loras = self._check_inputs(input_ids, attention_mask, lora)
        if attention_mask is None:
            attention_mask = np.ones(np.shape(input_ids), np.int32)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        eos = self.eos_ids(eos_token_id)
        pad = pad_token_id if pad_token_id is not None else (self._pad_id() if eos.size else 0)
        ids, mask = self.put_batch(input_ids, attention_mask)
        out = sampler.generate(self._graphdef, self._state, ids, mask, self._put_loras(loras),
                               jax.random.key(seed), jnp.float32(temperature), jnp.float32(top_p),
                               jnp.asarray(eos, jnp.int32), jnp.int32(pad), max_new_tokens)
        return np.asarray(out)

    def eos_ids(self, eos_token_id=None) -> np.ndarray:
        """The ids that end generation: ``eos_token_id`` if given, else the tokenizer's and the config's."""
        if eos_token_id is None:
            eos_token_id = []
            if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
                eos_token_id.append(self.tokenizer.eos_token_id)
            cfg_eos = self.cfg.eos_token_id
            eos_token_id += cfg_eos if isinstance(cfg_eos, list) else [] if cfg_eos is None else [cfg_eos]
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        return np.asarray(sorted(set(ids)) or [-1], np.int32)

    def _pad_id(self) -> int:
        if self.tokenizer is not None and self.tokenizer.pad_token_id is not None:
            return int(self.tokenizer.pad_token_id)
        return int(self.cfg.pad_token_id or 0)

    # -- text helpers ------------------------------------------------------------------------------------
    def chat_prompt(self, user_texts: Sequence[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise user messages with the tokenizer's chat template, left-padded -> (ids, mask)."""
        tok = self._need_tokenizer()
        rows = [prompts.generation_text(tok, [{"role": "user", "content": t}]) for t in user_texts]
        return self.encode(rows, max_length, add_special_tokens=False)

    def encode(self, texts: Sequence[str], max_length: int | None = None, add_special_tokens: bool = False):
        tok = self._need_tokenizer()
        enc = tok(list(texts), padding="longest" if max_length is None else "max_length", truncation=max_length is not None,
                  max_length=max_length, add_special_tokens=add_special_tokens, return_tensors="np")
        return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)

    def decode(self, ids: np.ndarray) -> list[str]:
        tok = self._need_tokenizer()
        eos = set(self.eos_ids(None).tolist())
        texts = []
        for row in np.asarray(ids):
            row = row.tolist()
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True))
        return texts

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer; load it from a folder with tokenizer.json")
        return self.tokenizer


def load_tokenizer_from(path: str | os.PathLike):
    """The tokenizer of ``path`` (left padding), or None when the folder has no tokenizer files: a fast tokenizer
    (``tokenizer.json``) is read without transformers (``hf_tokenizer``), any other through ``AutoTokenizer``."""
    path = pathlib.Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return None
    if is_tokenizer_folder(path):
        tok = Tokenizer.from_folder(path, padding_side="left")
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------------------------------- jitted cores
@functools.partial(jax.jit, static_argnums=0)
def _logits_fn(graphdef, state, ids, mask, positions, loras):
    return nnx.merge(graphdef, state)(ids, mask, positions, loras)
