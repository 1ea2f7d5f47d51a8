"""``Shine``: the public face of SHINE — a frozen base model plus the trained hypernetwork.

``generate_lora`` turns evidence into a per-example LoRA in one forward pass; ``logits``/``ask`` answer with it,
the document no longer in the prompt. Checkpoints: our own format (``save``/``load``) and the official PyTorch
files (``from_official``/``to_official``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shine_jax import checkpoints, multihost
from shine_jax import stages as stages_lib
from shine_jax.base_model import BaseModel, build_decoder, lora_shardings, state_shardings
from shine_jax.convert import official as off
from shine_jax.data import pipelines, prompts
from shine_jax.errors import InputError
from shine_jax.fileutil import atomic_dir
from shine_jax.model.hypernet import HyperConfig, Hypernetwork
from shine_jax.model.m2p import M2PConfig
from shine_jax.model.objective import shine_loss

SPECIAL_TOKENS = ("<RECON>", "<COMP>", "<NOTHING>")


def hyper_config_to_dict(h: HyperConfig) -> dict:
    return dataclasses.asdict(h)


def hyper_config_from_dict(d: dict) -> HyperConfig:
    d = dict(d)
    return HyperConfig(**{**d, "m2p": M2PConfig(**d.get("m2p", {}))})


DEFAULT_EVIDENCE_LENGTH = 1150  # the paper's context length


class Shine:
    def __init__(self, base: BaseModel, hyper: Hypernetwork, max_evidence_length: int | None = None):
        self.base = base
        self.hyper = hyper
        self.mesh = None
        self.max_evidence_length = max_evidence_length or DEFAULT_EVIDENCE_LENGTH
        self.source_dir: pathlib.Path | None = None  # the SHINE folder it was loaded from (None: built in memory)
        self._hgraph, self._hstate = nnx.split(hyper)

    # -- properties --------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def cfg(self) -> HyperConfig:
        return self.hyper.cfg

    @property
    def num_memory_tokens(self) -> int:
        return self.hyper.num_tokens

    # the functional split of the hypernetwork (read-only: use set_params/shard to change)
    @property
    def hyper_graphdef(self) -> nnx.GraphDef:
        return self._hgraph

    @property
    def hyper_state(self) -> nnx.State:
        return self._hstate

    @classmethod
    def create(cls, base: BaseModel, hyper_cfg: HyperConfig, seed: int = 0,
               max_evidence_length: int | None = None) -> Shine:
        """A fresh hypernetwork with the official initialisation on top of ``base``."""
        return cls(base, Hypernetwork(base.cfg, hyper_cfg, nnx.Rngs(seed)), max_evidence_length)

    def set_hyper_params(self, params: dict) -> None:
        nnx.replace_by_pure_dict(self._hstate, jax.tree.map(jnp.asarray, params))
        nnx.update(self.hyper, self._hstate)

    def hyper_params(self) -> dict:
        return jax.tree.map(np.asarray, nnx.to_pure_dict(self._hstate))

    def shard(self, mesh) -> Shine:
        self.base.shard(mesh)
        self.mesh = mesh
        self._hstate = jax.device_put(self._hstate, state_shardings(self._hstate, mesh))
        nnx.update(self.hyper, self._hstate)
        return self

    # -- the public contract -----------------------------------------------------------------------------
    def memory_states(self, evidence_ids, evidence_mask=None) -> jax.Array:
        ids, mask = self._evidence(evidence_ids, evidence_mask)
        return _memory_states_fn(self.base.graphdef, self.base.state, self._hgraph, self._hstate, ids, mask)

    def generate_lora(self, evidence_ids, evidence_mask=None) -> dict:
        ids, mask = self._evidence(evidence_ids, evidence_mask)
        return _generate_lora_fn(self.base.graphdef, self.base.state, self._hgraph, self._hstate, ids, mask,
                                 self.mesh)

    def logits(self, input_ids, attention_mask=None, lora=None, positions=None) -> jax.Array:
        return self.base.logits(input_ids, attention_mask, lora=lora, positions=positions)

    def loss(self, input_ids, attention_mask, labels, evidence_ids, evidence_mask) -> jax.Array:
        """The training loss (HF causal-LM cross-entropy of the answer pass with the generated LoRA)."""
        batch = {k: jnp.asarray(v) for k, v in dict(input_ids=input_ids, attention_mask=attention_mask,
                                                     labels=labels, evidence_ids=evidence_ids,
                                                     evidence_mask=evidence_mask).items()}
        return _loss_fn(self.base.graphdef, self.base.state, self._hgraph, self._hstate, batch)[0]

    def ask(self, document: str, question: str | Sequence[str], max_new_tokens: int = 64,
            max_evidence_length: int | None = None, on_long: str = "truncate") -> str | list[str]:
        """Greedy answer(s) to question(s) about ``document`` from its generated LoRA (document not in prompt).

        A document longer than the evidence length is truncated with a warning giving both lengths, or refused
        with ``on_long="refuse"`` (the rule ``eval`` follows)."""
        questions = [question] if isinstance(question, str) else list(question)
        lora = self.adapter(document, max_evidence_length, on_long)
        ids, mask = self.base.chat_prompt(questions)
        lora = jax.tree.map(lambda x: jnp.repeat(x, len(questions), axis=1), lora)
        answers = [a.strip() for a in self.base.decode(self.base.generate(ids, mask, max_new_tokens, lora=lora))]
        return answers[0] if isinstance(question, str) else answers

    def adapter(self, document: str, max_evidence_length: int | None = None, on_long: str = "truncate") -> dict:
        """The generated LoRA of one document (batch 1): made once, then used for any number of ``chat`` turns."""
        ids, mask = self.encode_evidence([document], max_evidence_length, on_long)
        return jax.block_until_ready(self.generate_lora(ids, mask))

    def chat(self, lora: dict | None, messages: Sequence[dict], max_new_tokens: int = 64) -> str:
        """The next assistant turn of ``messages`` (``[{"role": "user" | "assistant", "content": str}, ...]``,
        ending with a user turn), answered greedily with ``lora`` (``adapter``; None: the base alone). Earlier
        turns stay in the prompt; the document does not."""
        if not messages or messages[-1].get("role") != "user":
            raise InputError("a conversation must end with a user message")
        bad = [m.get("role") for m in messages if m.get("role") not in ("user", "assistant")]
        if bad:
            raise InputError(f"message roles must be user or assistant, got {bad[0]!r}")
        tok = self.base.tokenizer
        ids = np.asarray([prompts.encode_text(tok, prompts.generation_text(tok, list(messages)))], np.int32)
        return self.base.decode(self.base.generate(ids, None, max_new_tokens, lora=lora))[0].strip()

    def encode_evidence(self, documents: Sequence[str], max_length: int | None = None, on_long: str = "truncate",
                        names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Documents -> (evidence_ids, evidence_mask) ``[n, max_length]``, as training encodes them
        (``pipelines.encode_evidence``; default length: the run's evidence length). The one long-document policy
        of ``ask``, ``eval`` and ``internalize``: an empty document is refused; a longer one is truncated to its
        first tokens with a warning giving both lengths, or refused with ``on_long="refuse"``."""
        limit = max_length or self.max_evidence_length
        tok = self.base.tokenizer
        token_ids = [pipelines.document_tokens(tok, text, limit, on_long,
                                               f"document {names[i]}" if names is not None else "the document")
                     for i, text in enumerate(documents)]
        return pipelines.pad_evidence(tok, token_ids, limit)

    def export_peft(self, lora: dict, out_dir: str | os.PathLike, index: int | Sequence[int] = 0,
                    overwrite: bool = False, base_name: str | None = None, scale: float = 1.0,
                    documents: Sequence[str] | None = None) -> pathlib.Path:
        """Example ``index`` of a generated LoRA as a PEFT adapter folder (see ``convert/peft.py``); several
        indices compose their documents into one adapter (factors concatenated along the rank: the sum of their
        updates). ``scale`` multiplies the update. ``base_name`` goes to ``base_model_name_or_path`` (default: the
        HF folder this run's base was read from), so ``AutoPeftModelForCausalLM`` finds the base. With
        ``documents`` (the texts of the indices) a ``shine_provenance.json`` records their SHA-256 and this run."""
        from shine_jax.convert.peft import write_peft_adapter
        from shine_jax.model.lora import compose_examples, lora_batch

        indices = [index] if isinstance(index, int) else list(index)
        if not indices:
            raise InputError("no example to export: give at least one index")
        if documents is not None and len(documents) != len(indices):
            raise InputError(f"{len(documents)} documents for {len(indices)} adapter examples")
        batch = lora_batch(lora)
        bad = [i for i in indices if not -batch <= i < batch]
        if bad:
            raise InputError(f"index {bad[0]} is outside the LoRA batch of {batch} example(s)")
        one = compose_examples(lora, [i % batch for i in indices], [scale] * len(indices))
        name = base_name if base_name is not None else str(self.hf_source or "")
        if not name:
            warnings.warn("this run's base has no Hugging Face folder, so the adapter names no base: write one with "
                          "`shine-jax convert jax-to-hf` and pass its path or hub id as --base-model (base_name)",
                          stacklevel=2)
        provenance = None if documents is None else self.adapter_provenance(documents, scale, name)
        return write_peft_adapter(self.base.cfg, one, out_dir, 0, name, overwrite, provenance)

    def adapter_provenance(self, documents: Sequence[str], scale: float, base_name: str) -> dict:
        """What an exported adapter was made from: each document's SHA-256, this SHINE folder and its training."""
        stage = {}
        if self.source_dir is not None and (self.source_dir.parent / "summary.json").is_file():
            summary = json.loads((self.source_dir.parent / "summary.json").read_text())
            stage = {k: summary.get(k) for k in ("stage", "steps", "val_loss", "settings_hash")}
        return {
            "documents": [{"sha256": hashlib.sha256(d.encode("utf-8")).hexdigest(), "characters": len(d)}
                          for d in documents],
            "shine_checkpoint": None if self.source_dir is None else str(self.source_dir),
            "trained": stage, "hypernetwork_scale": self.cfg.scale, "lora_rank": self.cfg.lora_rank,
            "adapter_scale": scale, "adapter_rank": self.cfg.lora_rank * len(documents),
            "base_model_name_or_path": base_name,
            "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "shine_jax_version": importlib.metadata.version("shine-jax"),
        }

    @property
    def hf_source(self) -> str | None:
        """The HF folder the base was read from (what a PEFT adapter names as its base); None for a base trained
        here (it has no HF folder until ``shine-jax convert jax-to-hf`` writes one)."""
        origin = self.base.origin
        return str(origin.path) if origin is not None and origin.kind == "hf" else None

    def _evidence(self, ids, mask):
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"evidence_ids must be [batch, length], got shape {ids.shape}")
        mask = np.ones_like(ids) if mask is None else np.asarray(mask)
        if mask.shape != ids.shape:
            raise ValueError(f"evidence_mask shape {mask.shape} != evidence_ids shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.base.cfg.vocab_size):
            raise ValueError(f"evidence token ids must lie in [0, {self.base.cfg.vocab_size})")
        return self.base.put_batch(ids, mask)

    # -- our format --------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False, self_contained: bool = False) -> pathlib.Path:
        """``shine.json`` + Orbax hypernetwork params + the frozen base: a reference to the folder it was loaded
        from (``base.json``, see ``shine_jax.checkpoints``), or with ``self_contained`` (or a base built in
        memory) a full copy in ``base/``.

        With several processes (multi-host) every process must call it, each with its own local ``path``: the
        parameters are gathered and every host gets a complete copy (see ``shine_jax.multihost``)."""
        copy_base = self_contained or self.base.origin is None
        base_state = self.base.host_params() if copy_base else None
        hyper = nnx.to_pure_dict(self._hstate)
        if jax.process_count() > 1:
            hyper = multihost.to_host(hyper)

        def write(out_dir):
            with atomic_dir(out_dir, overwrite) as tmp:
                if copy_base:
                    self.base.write_local(tmp / checkpoints.BASE_DIR, base_state, overwrite=False)
                else:  # refer to the base; the relative path is computed from where the folder will stand
                    ref = checkpoints.reference(self.base.origin, self.base.cfg.to_dict(), pathlib.Path(out_dir))
                    checkpoints.write_reference(tmp, ref)
                with multihost.local_checkpointer() as ckptr:
                    ckptr.save(tmp / checkpoints.HYPER_DIR, hyper)
                checkpoints.write_shine_meta(tmp, hyper_config_to_dict(self.cfg), self.max_evidence_length)

        return multihost.write_on_every_host(path, write, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, compute_dtype: str | None = None, dtype: str | None = None) -> Shine:
        """A SHINE folder (or a workdir: its most trained stage) with its base, read once. ``dtype``: the base's
        weights in that dtype from the file on (a bfloat16 checkpoint read as bfloat16 stays half the size)."""
        path = resolve_shine_dir(path)
        hcfg, params, meta = cls.read_hyper(path)
        base = load_base_from(checkpoints.resolve_base(path), compute_dtype, dtype)
        shine = cls.with_params(base, hcfg, params, max_evidence_length=meta.get("max_evidence_length"))
        shine.source_dir = path.absolute()
        return shine

    @classmethod
    def with_params(cls, base: BaseModel, hyper_cfg: HyperConfig, params: dict,
                    max_evidence_length: int | None = None) -> Shine:
        """A hypernetwork holding ``params`` (a saved ``hyper_params()``), never initialised: its shapes come from
        ``nnx.eval_shape``, so a command that loads a SHINE folder skips the random init (1.5-3 s of first-use
        eager ops). A folder saved before a parameter existed gets that parameter's fresh init, as before."""
        abstract = nnx.eval_shape(lambda: Hypernetwork(base.cfg, hyper_cfg, nnx.Rngs(0)))
        graphdef, state = nnx.split(abstract)
        try:
            nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
        except ValueError:
            state = None  # keys the module does not have: set_hyper_params below raises on them as before
        if state is None or any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state)):
            shine = cls.create(base, hyper_cfg, max_evidence_length=max_evidence_length)
            shine.set_hyper_params(params)
            return shine
        return cls(base, nnx.merge(graphdef, state), max_evidence_length)

    @staticmethod
    def read_hyper(path: str | os.PathLike) -> tuple[HyperConfig, dict, dict]:
        """(hypernetwork config, its parameters, shine.json) of a SHINE folder, without reading the base."""
        path = resolve_shine_dir(path)
        meta = checkpoints.read_shine_meta(path)
        return hyper_config_from_dict(meta["hyper"]), multihost.restore(path / checkpoints.HYPER_DIR), meta

    # -- official checkpoints ----------------------------------------------------------------------------
    @classmethod
    def from_official(cls, ckpt_dir: str | os.PathLike, hf_dir: str | os.PathLike, m2p_heads: int | None = None,
                      scale: float = 1e-3, method: str = "rl", layer_transformer_first: bool = True,
                      base: BaseModel | None = None) -> Shine:
        """Load an official checkpoint on top of the HF base model in ``hf_dir``.

        Hyper-parameters not stored in the files (M2P heads, scale, reshape method) are arguments; the rest
        (r, R, M, M2P depth and type) is read from the tensor shapes and checked against the base model.
        """
        raw = off.read_official(ckpt_dir)
        base = base or BaseModel.from_hf(hf_dir)
        if base.tokenizer is not None:
            base = with_shine_tokens(base)
        hcfg = off.infer_hyper_config(raw, base.cfg, m2p_heads, scale, method, layer_transformer_first)
        shine = cls.create(base, hcfg)
        shine.set_hyper_params(off.official_to_params(raw, base.cfg))
        return shine

    def to_official(self, out_dir: str | os.PathLike, global_step: int = 0, overwrite: bool = False) -> pathlib.Path:
        off.check_representable(self.cfg.m2p.memory_norm)
        p = self.hyper_params()
        return off.write_official(out_dir, p["mem_tokens"], p["m2p"], p["metalora"], p.get("extra_metalora"),
                                  self.base.cfg, global_step, overwrite)


def load_base_from(origin: checkpoints.BaseOrigin, compute_dtype: str | None = None,
                   dtype: str | None = None) -> BaseModel:
    """The base model of ``origin``: a shine_jax folder as saved, an HF folder with SHINE's tokens added;
    ``dtype``: its weights' dtype (default: float32 for HF folders, as saved for ours)."""
    if origin.kind == "hf":  # as from_official and training loaded it: SHINE's tokens added when it has a tokenizer
        base = BaseModel.from_hf(origin.path, dtype=dtype or "float32", compute_dtype=compute_dtype)
        return with_shine_tokens(base) if base.tokenizer is not None else base
    return BaseModel.load(origin.path, dtype=dtype, compute_dtype=compute_dtype)


def resolve_shine_dir(path: str | os.PathLike) -> pathlib.Path:
    """A SHINE folder, or a training workdir (then its most trained stage's ``final``)."""
    path = pathlib.Path(path).absolute()
    if checkpoints.is_shine_folder(path):
        return path
    for stage in stages_lib.most_trained_first():  # Shine.load(workdir) takes the most trained stage
        if checkpoints.is_shine_folder(path / stage / "final"):
            return path / stage / "final"
    name = checkpoints.SHINE_JSON
    raise FileNotFoundError(f"{path} holds no trained SHINE ({name}, or <stage>/final/{name} of a workdir)")


def with_shine_tokens(base: BaseModel) -> BaseModel:
    """Add SHINE's ``<RECON>``, ``<COMP>``, ``<NOTHING>`` tokens and resize the vocabulary to ``len(tokenizer)``
    as the official trainer does (rows are copied; rows beyond the old vocabulary start at the mean embedding).

    A Qwen3 base also gets the official chat format: the official trainer replaces Qwen3's template and renders
    every conversation and prompt with ``enable_thinking=False``, which gives plain ChatML turns with no system
    prompt and no ``<think>`` block (Qwen3's own template puts an empty one before the last answer), so its
    tokenizer renders with ``prompts.CHAT_TEMPLATE``. Other families keep their own template."""
    tok = copy.deepcopy(base.tokenizer)  # the caller's tokenizer stays as it was
    tok.add_tokens(list(SPECIAL_TOKENS))
    if base.cfg.family == "qwen3":
        tok.chat_template = prompts.CHAT_TEMPLATE
    n = len(tok)
    if n == base.cfg.vocab_size:
        unchanged = len(base.tokenizer) == n and tok.chat_template == base.tokenizer.chat_template
        return base if unchanged else BaseModel(base.decoder, tok, base.hf_config, base.origin)
    params = base.params()

    def resize(table, axis):
        if n <= table.shape[axis]:
            return np.take(table, np.arange(n), axis=axis)
        extra = np.repeat(table.mean(axis=axis, keepdims=True), n - table.shape[axis], axis=axis)
        return np.concatenate([table, extra], axis=axis)

    params["embed"] = resize(params["embed"], 0)
    if "lm_head" in params:
        params["lm_head"] = resize(params["lm_head"], 1)
    cfg = dataclasses.replace(base.cfg, vocab_size=n)
    hf = dict(base.hf_config or {}, vocab_size=n)
    # the origin stays the HF folder: loading a SHINE folder that refers to it adds the tokens the same way
    return BaseModel(build_decoder(cfg, params, param_dtype=str(params["embed"].dtype)), tok, hf, base.origin)


# ---------------------------------------------------------------------------------------------- jitted cores
@functools.partial(jax.jit, static_argnums=(0, 2))
def _memory_states_fn(dgraph, dstate, hgraph, hstate, ids, mask):
    return nnx.merge(hgraph, hstate).memory_states(nnx.merge(dgraph, dstate), ids, mask)


@functools.partial(jax.jit, static_argnums=(0, 2, 6))
def _generate_lora_fn(dgraph, dstate, hgraph, hstate, ids, mask, mesh):
    lora = nnx.merge(hgraph, hstate).generate_lora(nnx.merge(dgraph, dstate), ids, mask)
    if mesh is not None:  # the per-example LoRA's batch axis shards with the data
        lora = jax.lax.with_sharding_constraint(lora, lora_shardings(lora, mesh))
    return lora




@functools.partial(jax.jit, static_argnums=(0, 2))
def _loss_fn(dgraph, dstate, hgraph, hstate, batch):
    return shine_loss(nnx.merge(dgraph, dstate), nnx.merge(hgraph, hstate), batch)
