"""Training configuration: one schema (``base_config``), config files that override it, validation.

Config files live in ``configs/`` and define ``get_config(arg)`` (big_vision style): ``arg`` is what follows the
colon in ``--config configs/tiny.py:pretrain``. Every file starts from ``base_config()``, so an unknown field, in a
file or on the command line (``--config.optim.lr=1e-4``), fails at start with a message naming it.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import math
import pathlib
import re
from typing import Any

import ml_collections

from shine_jax import stages as stages_lib
from shine_jax.errors import UserError
from shine_jax.model.config import ModelConfig
from shine_jax.model.hypernet import HyperConfig, num_memory_tokens
from shine_jax.model.layers import ATTENTION_IMPLS
from shine_jax.model.losses import LOSSES
from shine_jax.model.m2p import M2PConfig

STAGES = stages_lib.NAMES  # in training order; what each stage does: shine_jax/stages.py
ALL_STAGES = stages_lib.ALL_NAMES  # and the side stages (memory3_train), trained apart from the pipeline
STAGE_ONLY_GROUPS = {"memory3": "memory3_train"}  # config groups that only this stage reads (not in others' hash)
MODEL_SOURCES = ("scratch", "hf", "smollm2")


TRACKERS = ("tensorboard", "wandb", "none")  # where a stage's scalars go besides metrics.jsonl


class ConfigError(UserError):
    """A configuration field that is unknown or inconsistent: the message names it."""


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "unnamed"
    c.stage = "pretrain"
    c.seed = 0
    c.steps = 100  # optimizer steps of this stage
    c.batch_size = 8  # examples per optimizer step (the effective batch)
    c.grad_accum = 1  # micro-batches per optimizer step
    c.checkpoint_every = 50
    c.keep_checkpoints = 2
    c.log_every = 10
    c.tracker = "tensorboard"  # besides metrics.jsonl: tensorboard (event files) | wandb (offline run) | none
    c.tracker_project = "shine_jax"  # the W&B project
    c.profile_steps = ""  # "A,B": a jax.profiler trace of steps A..B in <stage>/tensorboard/plugins/profile
    c.eval_every = 50
    c.eval_batches = 4
    c.mesh = (1, -1, 1)  # (data, fsdp, tensor); -1 takes the remaining devices
    c.init_from = ""  # checkpoint dir of the previous stage; "" = the previous stage in this workdir
    c.checkpoint_dir = ""  # "" = <workdir>/<stage>/checkpoints, else <checkpoint_dir>/<stage> (or gs://bucket/...)

    c.model = ml_collections.ConfigDict()
    c.model.source = "scratch"  # scratch (tiny, trained by base_pretrain) | hf (hf_dir) | smollm2 (built offline)
    c.model.hf_dir = ""
    c.model.preset = ""  # architecture name in shine_jax/model/presets.py (planning without weights)
    c.model.family = "llama"  # scratch only
    c.model.vocab_size = 0  # scratch: 0 = the tokenizer's size
    c.model.hidden_size = 128
    c.model.intermediate_size = 256
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 4
    c.model.head_dim = 32
    c.model.rope_theta = 10000.0
    c.model.rms_norm_eps = 1e-6
    c.model.tie_word_embeddings = True
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"  # bfloat16: bf16 compute, float32 master weights
    c.model.remat = False
    # The frozen base's storage dtype in stages that train a hypernetwork on it (the trainables stay float32):
    # bfloat16 halves its memory (Qwen3-8B: 32.8 -> 16.4 GB); float32 keeps the parity tests exact.
    c.model.frozen_param_dtype = "float32"
    c.model.attention = "reference"  # reference (hand-written backward; fastest on CPU) | xla | cudnn | auto

    c.shine = ml_collections.ConfigDict()
    c.shine.lora_rank = 4
    c.shine.metalora_rank = 8
    c.shine.extra_metalora_rank = 0  # ift stages: train an additional Meta LoRA, freeze the loaded one
    c.shine.scale = 1e-3
    c.shine.method = "rl"
    c.shine.m2p = ml_collections.ConfigDict()  # model.m2p.M2PConfig's fields, by their names
    c.shine.m2p.type = "transformer"
    c.shine.m2p.num_layers = 2
    c.shine.m2p.num_heads = 4
    c.shine.m2p.ffn_mult = 2
    c.shine.m2p.layer_transformer_first = True
    c.shine.m2p.memory_norm = "none"  # none (official) | rmsnorm | layernorm of each memory state before M2P
    c.shine.train_mem_tokens = True  # the official DDP trainer never updates them (see README)
    # Departures from SHINE for the hypernetwork's early plateau; every default below is the official behaviour.
    c.shine.mem_init = "zeros"  # memory tokens: zeros (official) | normal (N(0, mem_init_std^2), breaks symmetry)
    c.shine.mem_init_std = 0.02  # the usual embedding init: a memory token starts like a fresh token embedding
    c.shine.m2p_pos_init = "zeros"  # M2P layer/token position embeddings: zeros (official) | normal
    c.shine.m2p_pos_init_std = 0.02  # BERT/GPT-2's position-embedding init
    c.shine.loss = "nll"  # nll (official) | kl (distil the base with the document in context) | nll+kl (IFT)
    c.shine.kl_weight = 1.0  # nll+kl: loss = nll + kl_weight * kl

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # where the bundled corpus and tokenizer are prepared ("" = <workdir>/data)
    c.data.builder_config = "mqa"
    c.data.num_people = 10000
    c.data.train_docs = 20000
    c.data.eval_docs = 500
    c.data.jsonl_train = ""  # user data instead of the bundled corpus (DESIGN.md JSON Lines)
    c.data.jsonl_eval = ""
    c.data.pretrain_files = ""  # SHINE pretraining on a text corpus: GLOB of .parquet/.jsonl/.txt shards (streamed)
    c.data.tokenizer_vocab = 2048  # tiny tokenizer (scratch models)
    c.data.context_length = 256
    c.data.conversation_length = 128
    # 0: every row padded to the lengths above (the official collators); N: each batch cut to the shortest of N
    # bucket lengths that holds its longest row (data/buckets.py; at most N compiled shapes per padded field)
    c.data.length_buckets = 0
    # 0: batches drawn at random (official); W: the examples of every W batches sorted by length and cut into
    # batches of similar length (then in a seeded random order), so that length_buckets cuts more (a departure)
    c.data.length_grouping = 0
    # threads that make batches ahead of the step (Grain's ReadOptions). 0: each batch is made in the main thread
    # while the dispatched step runs; the records are in memory, so threads only add GIL contention (Grain's own
    # advice), which cost the tiny stages 0.2-0.3 s a step with Grain's default of 16 threads x 500 batches
    c.data.read_threads = 0
    c.data.comp_fraction = 0.5  # pretrain: share of COMP (vs RECON) examples
    c.data.comp_keep_min = 0.7  # COMP keeps this..max share of the words as evidence
    c.data.comp_keep_max = 0.9
    c.data.pack_texts = True  # pretrain: several texts per evidence, joined by <|endoftext|>
    c.data.distractors = 0  # ift: distractor bios added to each context
    # ift_mqa: this share of the training documents is replaced by a document about freshly generated people
    # (corpus.fresh_document, 1..ift_fresh_max_people): names and most values no other document holds
    c.data.ift_fresh_share = 0.0
    c.data.ift_fresh_max_people = 4
    c.data.lm_length = 256  # base_pretrain sequence length
    c.data.lm_mix = (0.15, 0.15, 0.70)  # base_pretrain: shares of bio / QA without the bio / bio-in-prompt QA
    c.data.lm_questions = 4  # base_pretrain: at most this many QA turns per example (0 = all that fit)
    c.data.lm_answer_loss = False  # base_pretrain: QA examples scored on the answers only
    c.data.lm_pack = False  # base_pretrain: several examples per row (no padding between them)
    c.data.lm_fact_share = 0.0  # base_pretrain: in-context examples with only the answer's sentence as the document
    c.data.lm_person_share = 0.0  # base_pretrain: in-context examples with only the asked person's paragraph
    c.data.lm_fresh_share = 0.0  # base_pretrain: examples about freshly generated people (answers must be read)
    c.data.lm_fresh_max_people = 4  # base_pretrain: people per fresh document, 1..this
    c.data.lm_copy_share = 0.0  # base_pretrain: examples that ask for the document back verbatim
    c.data.lm_broad_share = 0.0  # base_pretrain: examples about corpus.broad_document (any names, key-value facts)
    c.data.lm_relation_share = 0.0  # base_pretrain: examples about corpus.relation_document (invented relations)
    c.data.lm_copy_warmup = 0.0  # base_pretrain (packed): this share of the first steps copies random token spans

    c.memory3 = ml_collections.ConfigDict()  # memory3_train (eval.memory3's settings; data.memory3_data)
    c.memory3.reference_tokens = 128  # tokens per reference, as the memory3 method cuts them
    c.memory3.top_k = 8  # tokens a reference keeps per memory layer and KV head
    c.memory3.memories = 5  # references a row reads
    c.memory3.prefix = "Reference: "  # put before each reference when it is encoded
    c.memory3.lm_share = 0.3  # rows of continual LM on a reference reading its neighbours (the rest: QA)
    c.memory3.lm_docs = 500  # training documents whose references are the LM texts and their neighbours (the
    # sentence embedder reads each reference once: ~800 references, about a CPU minute)
    c.memory3.fresh_max_people = 2  # QA rows: documents about 1..this freshly generated people

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.01
    c.optim.clip_norm = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.mem_tokens_lr_mult = 1.0  # lr multiplier of the memory tokens (1.0: one lr for all, as SHINE)
    c.optim.m2p_lr_mult = 1.0  # ... of the M2P (weights, biases, norms, position embeddings)
    c.optim.metalora_lr_mult = 1.0  # ... of the Meta LoRA (and the IFT additional Meta LoRA)
    return c


def parse_arg(arg: str | None, *, positional: tuple[str, ...] = (), **spec) -> ml_collections.ConfigDict:
    """The ``:ARG`` of a config file as typed fields (big_vision style): ``"rank,size=1p7b,steps=100"``.

    ``spec`` holds every field with its default, whose type the value is parsed as (a bare ``name`` sets a boolean
    field to True). The first bare tokens fill the ``positional`` fields in order. Unknown fields, values that do
    not parse and tokens beyond the positional ones are one ConfigError naming the token."""
    out = ml_collections.ConfigDict(dict(spec))
    bare = list(positional)
    for token in (t.strip() for t in (arg or "").split(",")):
        if not token:
            continue
        key, eq, value = token.partition("=")
        if not eq and key in spec and isinstance(spec[key], bool) and key not in bare:
            out[key] = True
            continue
        if not eq:
            if not bare:
                raise ConfigError(f"config argument {token!r} is not a field; use {', '.join(spec)} as NAME=VALUE")
            key, value = bare.pop(0), token
        elif key not in spec:
            raise ConfigError(f"unknown config argument {key!r}; known: {', '.join(spec)}")
        default = spec[key]
        try:
            out[key] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise ConfigError(f"config argument {key}={value!r} is not a {type(default).__name__}") from None
    return out


PACKAGED_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"  # shipped inside the package
# a checkout's configs/ links to those: a name resolves there, to the same paths as `--config configs/X.py` (the
# paths, e.g. of the shipped base, are part of a stage's recorded settings)
CHECKOUT_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def packaged_configs() -> list[str]:
    """The names a config spec may use instead of a path: ``tiny``, ``qwen3_8b``, ``sweeps/tiny_cpu``, ..."""
    return sorted(str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in PACKAGED_CONFIGS.rglob("*.py"))


def config_file(path: str) -> pathlib.Path:
    """A config spec's file: the path as given, else a config shipped in the package by its name (``tiny``,
    ``sweeps/tiny_cpu``: what an installed wheel runs without a checkout)."""
    file = pathlib.Path(path)
    if not file.is_file() and not file.suffix and (PACKAGED_CONFIGS / f"{path}.py").is_file():
        checkout = CHECKOUT_CONFIGS / f"{path}.py"
        return checkout if checkout.is_file() else PACKAGED_CONFIGS / f"{path}.py"
    return file


def import_config_module(path: str, kind: str = "config", error: type[Exception] = ConfigError):
    """The Python file behind a config spec, imported; it must define ``get_config(arg)`` (configs as code)."""
    file = config_file(path)
    if not file.is_file():
        raise error(f"{kind} file {path} does not exist (nor is it one of the packaged configs: "
                    f"{', '.join(packaged_configs())})")
    module_spec = importlib.util.spec_from_file_location(f"shine_{kind}_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise error(f"{path} defines no get_config(arg)")
    return module


def import_get_config(spec: str, kind: str = "config", error: type[Exception] = ConfigError):
    """``path/to/file.py[:arg]`` -> (the file's ``get_config``, ``arg`` or None, the file's path); ``kind`` names
    the file in the one-line ``error`` for a missing file or a missing ``get_config`` (configs as code)."""
    path, _, arg = spec.partition(":")
    return import_config_module(path, kind, error).get_config, arg or None, config_file(path)


def pipeline_stages(path: str) -> tuple[str, ...]:
    """The stages a config file trains end to end, in order: its ``PIPELINE`` tuple, else every stage its model
    source allows (``base_pretrain`` only for a base trained from scratch)."""
    module = import_config_module(path)
    stages = getattr(module, "PIPELINE", None)
    if stages is None:
        scratch = module.get_config("pretrain").model.source == "scratch"
        stages = STAGES if scratch else stages_lib.HYPERNETWORK_STAGES
    return check_stages(tuple(stages), f"{path}: PIPELINE")


def check_stages(stages: tuple[str, ...], where: str) -> tuple[str, ...]:
    """A multi-stage run: known stages, each once, in training order, ending with a SHINE stage."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"{where} must list stages from {', '.join(STAGES)}, got {', '.join(stages) or 'none'}")
    if list(stages) != sorted(set(stages), key=STAGES.index):
        raise ConfigError(f"{where} must list each stage once, in the order {', '.join(STAGES)}")
    if stages_lib.stage(stages[-1]).trains_base:
        raise ConfigError(f"{where} must end with a SHINE stage (pretrain, ift_mqa or ift_1qa)")
    return stages


def split_stage_overrides(overrides, stages) -> dict[str, list[str]]:
    """Overrides for a multi-stage run: ``[--config.]ift_mqa.steps=800`` reaches stage ``ift_mqa`` only (as
    ``steps=800``); an override that names no stage reaches every stage."""
    routed = {stage: [] for stage in stages}
    for item in overrides:
        key = item.strip().removeprefix("--").removeprefix("config.")
        head, dot, rest = key.partition(".")
        scoped = bool(dot) and head in ALL_STAGES
        if (rest if scoped else key).partition("=")[0].strip() == "stage":
            raise ConfigError(f"override {item!r}: a multi-stage run sets each config's stage itself")
        if scoped:
            if head not in routed:
                raise ConfigError(f"override {item!r} names stage {head!r}, which this run does not train "
                                  f"({', '.join(stages)})")
            routed[head].append(rest)
        else:
            for stage in stages:
                routed[stage].append(key)
    return routed


def load_config(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """``path/to/file.py[:arg]`` -> validated ConfigDict, with ``field=value`` / ``a.b=value`` overrides."""
    get_config, arg, _ = import_get_config(spec)
    cfg = get_config(arg)
    check_known_fields(cfg)
    for item in overrides:
        apply_override(cfg, item)
    validate(cfg)
    return cfg


# Fields that took the names of the model dataclasses they configure (M2PConfig): an old name is told its new one.
RENAMED = {"shine.m2p_type": "shine.m2p.type", "shine.m2p_layers": "shine.m2p.num_layers",
           "shine.m2p_heads": "shine.m2p.num_heads", "shine.m2p_ffn_mult": "shine.m2p.ffn_mult",
           "shine.layer_transformer_first": "shine.m2p.layer_transformer_first",
           "shine.memory_norm": "shine.m2p.memory_norm"}


def unknown_field(name: str) -> ConfigError:
    new = RENAMED.get(name)
    return ConfigError(f"unknown config field {name!r}" + (f"; it is now {new!r}" if new else ""))


def check_known_fields(cfg: ml_collections.ConfigDict, schema=None, prefix: str = "") -> None:
    schema = schema if schema is not None else base_config()
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if key not in schema:
            raise unknown_field(name)
        if isinstance(schema[key], ml_collections.ConfigDict):
            check_known_fields(cfg[key], schema[key], f"{name}.")


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """``a.b=value``: the value is parsed as a Python literal (falling back to a string) and must be a known field."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep:
        raise ConfigError(f"override {item!r} must look like field=value")
    *parents, leaf = key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(f"unknown config field {'.'.join(parents[:i + 1])!r}")
        node = node[part]
    if leaf not in node:
        raise unknown_field(key)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if old is not None and type(value) is not type(old):
        raise ConfigError(f"config field {key!r} expects {type(old).__name__}, got {raw!r}")
    node[leaf] = value


FROZEN_DTYPES = ("float32", "bfloat16")


def validate(c: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    def need(cond: bool, field: str, msg: str):
        if not cond:
            raise ConfigError(f"config field {field!r}: {msg}")

    need(c.stage in ALL_STAGES, "stage", f"{c.stage!r} is not one of {', '.join(ALL_STAGES)}")
    need(c.model.source in MODEL_SOURCES, "model.source", f"{c.model.source!r} is not one of {', '.join(MODEL_SOURCES)}")
    stage = stages_lib.stage(c.stage)
    need(not stage.trains_base or c.model.source == "scratch", "stage",
         "base_pretrain trains a base model from scratch; it needs model.source='scratch'")
    need(c.model.source != "hf" or bool(c.model.hf_dir), "model.hf_dir", "model.source='hf' needs model.hf_dir")
    if stage.dataset == "memory3":
        validate_memory3(c, need)
    for f in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every",
              "eval_every"):
        need(c[f] >= 1, f, f"must be >= 1, got {c[f]}")
    need(c.tracker in TRACKERS, "tracker", f"{c.tracker!r} is not one of {', '.join(TRACKERS)}")
    need(profile_range(c.profile_steps) is not None or not c.profile_steps.strip(), "profile_steps",
         f"must be FIRST,LAST with 1 <= FIRST <= LAST (steps to trace), got {c.profile_steps!r}")
    need(0 <= c.seed <= 2**31 - 1, "seed", f"must lie in [0, 2**31 - 1], got {c.seed}")  # an int32 every RNG takes
    need(c.batch_size % c.grad_accum == 0, "grad_accum", f"{c.grad_accum} does not divide batch_size {c.batch_size}")
    need(len(c.mesh) == 3, "mesh", f"needs 3 entries (data, fsdp, tensor), got {c.mesh}")
    need(not checkpoint_dir_problem(c.checkpoint_dir), "checkpoint_dir", checkpoint_dir_problem(c.checkpoint_dir))
    if num_devices is not None:
        known = math.prod(m for m in c.mesh if m != -1)
        need(num_devices % known == 0 and (-1 in c.mesh or known == num_devices), "mesh",
             f"{tuple(c.mesh)} does not match {num_devices} devices")
        resolved = [num_devices // known if m == -1 else m for m in c.mesh]
        micro, split = c.batch_size // c.grad_accum, resolved[0] * resolved[1]
        need(micro % split == 0, "batch_size",
             f"the micro-batch batch_size / grad_accum = {micro} is not divisible by the data x fsdp mesh axes "
             f"({resolved[0]} x {resolved[1]} = {split} devices), which would compute the same examples on several "
             f"devices; use a batch_size (or grad_accum) that makes it a multiple of {split}")
    need(0.0 <= c.data.comp_fraction <= 1.0, "data.comp_fraction", "must lie in [0, 1]")
    need(0.0 < c.data.comp_keep_min <= c.data.comp_keep_max < 1.0, "data.comp_keep_min",
         "need 0 < comp_keep_min <= comp_keep_max < 1")
    need(len(c.data.lm_mix) == 3 and min(c.data.lm_mix) >= 0 and sum(c.data.lm_mix) > 0, "data.lm_mix",
         f"needs 3 non-negative shares (bio, QA only, in-context QA) with a positive sum, got {tuple(c.data.lm_mix)}")
    need(0.0 <= c.data.lm_fact_share <= 1.0, "data.lm_fact_share", "must lie in [0, 1]")
    need(0.0 <= c.data.lm_person_share <= 1.0 - c.data.lm_fact_share, "data.lm_person_share",
         f"must lie in [0, 1 - lm_fact_share] = [0, {1.0 - c.data.lm_fact_share:g}]")
    need(0.0 <= c.data.lm_fresh_share <= 1.0, "data.lm_fresh_share", "must lie in [0, 1]")
    need(0.0 <= c.data.lm_copy_warmup < 1.0, "data.lm_copy_warmup", "must lie in [0, 1) (a share of the steps)")
    need(c.data.lm_copy_warmup == 0 or c.data.lm_pack, "data.lm_copy_warmup", "needs data.lm_pack=True")
    need(0.0 <= c.data.lm_copy_share <= 1.0, "data.lm_copy_share", "must lie in [0, 1]")
    need(0.0 <= c.data.lm_broad_share <= 1.0, "data.lm_broad_share", "must lie in [0, 1]")
    need(0.0 <= c.data.lm_relation_share <= 1.0, "data.lm_relation_share", "must lie in [0, 1]")
    need(0.0 <= c.data.ift_fresh_share <= 1.0, "data.ift_fresh_share", "must lie in [0, 1]")
    need(1 <= c.data.ift_fresh_max_people <= 4, "data.ift_fresh_max_people", "must lie in [1, 4]")
    need(1 <= c.data.lm_fresh_max_people <= 4, "data.lm_fresh_max_people", "must lie in [1, 4]")
    need(c.data.lm_questions >= 0, "data.lm_questions", "must be >= 0 (0 = all that fit)")
    need(0 <= c.data.distractors <= 8, "data.distractors", f"must lie in [0, 8], got {c.data.distractors}")
    hyper = hyper_config(c)  # the hypernetwork's own checks (reshape method, ranks, inits, M2P type and norm)
    need(c.shine.kl_weight > 0, "shine.kl_weight", "must be positive")
    need(c.shine.loss in LOSSES, "shine.loss", f"{c.shine.loss!r} is not one of {', '.join(LOSSES)}")
    need(c.shine.loss in stage.losses, "shine.loss",
         f"{c.shine.loss!r} distils answers to questions about a document; stage {c.stage} has none "
         "(use it in ift_mqa / ift_1qa, e.g. --config.ift_mqa.shine.loss=...)")
    for f in ("mem_tokens_lr_mult", "m2p_lr_mult", "metalora_lr_mult"):
        need(c.optim[f] > 0, f"optim.{f}", "must be positive")
    need(c.optim.lr > 0, "optim.lr", "must be positive")
    need(0 <= c.optim.warmup_steps <= c.steps, "optim.warmup_steps", f"must lie in [0, steps={c.steps}]")
    need(c.model.compute_dtype in ("float32", "bfloat16"), "model.compute_dtype", "float32 or bfloat16")
    need(c.model.param_dtype == "float32", "model.param_dtype", "master weights are float32")
    need(isinstance(c.data.length_buckets, int) and 0 <= c.data.length_buckets <= 64, "data.length_buckets",
         f"must be an integer in [0, 64] (0 = no buckets), got {c.data.length_buckets!r}")
    need(isinstance(c.data.read_threads, int) and 0 <= c.data.read_threads <= 64, "data.read_threads",
         f"must be an integer in [0, 64] (0 = batches made in the main thread), got {c.data.read_threads!r}")
    need(isinstance(c.data.length_grouping, int) and 0 <= c.data.length_grouping <= 1024, "data.length_grouping",
         f"must be an integer in [0, 1024] (batches per sorted window; 0 = off), got {c.data.length_grouping!r}")
    need(c.model.frozen_param_dtype in FROZEN_DTYPES, "model.frozen_param_dtype",
         f"{c.model.frozen_param_dtype!r} is not one of {', '.join(FROZEN_DTYPES)}")
    need(c.model.frozen_param_dtype == "float32" or stage.freezes_base, "model.frozen_param_dtype",
         f"stage {c.stage} trains the base, whose weights stay float32; the setting is for the stages that freeze it")
    need(c.model.attention in ATTENTION_IMPLS, "model.attention",
         f"{c.model.attention!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    need(c.model.attention != "cudnn" or c.model.compute_dtype == "bfloat16", "model.attention",
         "cuDNN flash attention runs in bfloat16; set model.compute_dtype=bfloat16 as well (or use xla)")
    if c.model.source == "scratch":
        dims = model_config(c, vocab_size=1)  # the vocabulary does not enter the LoRA shapes checked below
    else:  # the architecture comes with the weights; a named preset lets the shapes be checked before loading
        from shine_jax.model.presets import PRESETS

        need(not c.model.preset or c.model.preset in PRESETS, "model.preset",
             f"{c.model.preset!r} is not one of {', '.join(PRESETS)}")
        dims = PRESETS.get(c.model.preset)
    if dims is not None:
        need(dims.hidden_size % hyper.m2p.num_heads == 0, "shine.m2p.num_heads",
             f"{hyper.m2p.num_heads} does not divide hidden_size {dims.hidden_size}")
        try:
            num_memory_tokens(dims, hyper)
        except ValueError as e:
            raise ConfigError(f"config field 'shine.lora_rank': {e}") from None


def model_config(c: ml_collections.ConfigDict, vocab_size: int | None = None) -> ModelConfig:
    """The architecture of a base trained from scratch: ``ModelConfig``'s fields, read from ``c.model`` by their
    names (``model.vocab_size`` 0: ``vocab_size``, the tokenizer's); its checks become one config error."""
    m = c.model
    fields = {f.name: m[f.name] for f in dataclasses.fields(ModelConfig) if f.name in m}
    fields["vocab_size"] = m.vocab_size or vocab_size
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise _field_error(e, {f"model.{name}": name for name in fields}, "model") from None


def hyper_config(c: ml_collections.ConfigDict) -> HyperConfig:
    """The hypernetwork of ``c.shine`` (``HyperConfig``'s fields, ``shine.m2p`` = ``M2PConfig``'s, by their names);
    the additional Meta LoRA only in the stages that train one. Its checks become one config error."""
    s = c.shine
    fields = {f.name: s[f.name] for f in dataclasses.fields(HyperConfig) if f.name in s and f.name != "m2p"}
    if not stages_lib.stage(c.stage).extra_metalora:
        fields["extra_metalora_rank"] = 0
    try:
        return HyperConfig(**fields, m2p=M2PConfig(**s.m2p.to_dict()))
    except ValueError as e:
        names = {f"shine.{f.name}": f.name for f in dataclasses.fields(HyperConfig) if f.name != "m2p"}
        names |= {f"shine.m2p.{f.name}": f.name for f in dataclasses.fields(M2PConfig)}
        names["shine.method"], names["shine.m2p.type"] = "reshape method", "M2P type"
        raise _field_error(e, names, "shine") from None


def _field_error(error: ValueError, names: dict[str, str], section: str) -> ConfigError:
    """A model dataclass's check as one config error naming the field its message names first (``names``: config
    field -> the word the check uses for it; ``section`` when it names none)."""
    message = str(error)
    found = [(m.start(), field) for field, word in names.items()
             for m in [re.search(rf"\b{re.escape(word)}\b", message)] if m]
    return ConfigError(f"config field '{min(found)[1] if found else section}': {message}")


def memory3_settings(c: ml_collections.ConfigDict):
    """``eval.memory3.Memory3Settings`` of ``c.memory3``: what memory3_train encodes and reads memories with."""
    from shine_jax.eval.memory3 import Memory3Settings

    m = c.memory3
    return Memory3Settings(reference_tokens=m.reference_tokens, top_k=m.top_k, memories=m.memories, prefix=m.prefix)


def validate_memory3(c: ml_collections.ConfigDict, need) -> None:
    from shine_jax.errors import InputError

    try:
        memory3_settings(c).check()
    except InputError as e:
        raise ConfigError(f"config group 'memory3': {str(e).removeprefix('memory3: ')}") from None
    m = c.memory3
    need(0.0 <= m.lm_share <= 1.0, "memory3.lm_share", "must lie in [0, 1]")
    need(m.lm_docs >= 0, "memory3.lm_docs", f"must be >= 0, got {m.lm_docs}")
    need(m.lm_share == 0 or m.lm_docs > 0, "memory3.lm_docs", "continual LM rows (lm_share > 0) need documents")
    need(1 <= m.fresh_max_people <= 4, "memory3.fresh_max_people", "must lie in [1, 4]")
    need(m.reference_tokens <= c.data.conversation_length, "data.conversation_length",
         f"an LM row is one reference: {c.data.conversation_length} < memory3.reference_tokens "
         f"{m.reference_tokens}")


def side_stages(path: str) -> tuple[str, ...]:
    """The side stages a config file trains (its ``SIDE_STAGES``; none when it has none)."""
    return tuple(getattr(import_config_module(path), "SIDE_STAGES", ()))


def checkpoint_dir_problem(value: str) -> str:
    """What is wrong with a ``checkpoint_dir`` value ("" when nothing): a local path or ``gs://bucket[/prefix]``."""
    if value != value.strip():
        return f"{value!r} has leading or trailing whitespace"
    scheme, sep, rest = value.partition("://")
    if not sep:
        if value.lower().startswith(("gs:", "gcs:")):
            return f"{value!r} looks like a bucket path; write gs://BUCKET/PREFIX"
        return ""
    if scheme != "gs":
        return f"{value!r}: only gs:// URIs (or local paths) are supported, not {scheme}://"
    bucket = rest.split("/", 1)[0]
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        return f"{value!r} does not name a valid bucket (gs://BUCKET/PREFIX, lower-case letters, digits, - _ .)"
    return ""


def to_dict(c: ml_collections.ConfigDict) -> dict[str, Any]:
    return c.to_dict()


# fields that change how a run is logged or checkpointed, never what it trains
NOT_HASHED = ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints", "checkpoint_dir",
              "tracker", "tracker_project", "profile_steps", "data.read_threads")


def profile_range(text: str) -> tuple[int, int] | None:
    """``"A,B"`` -> (A, B) for 1 <= A <= B; None for anything else (``""`` included: no profiling)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    first, last = int(parts[0]), int(parts[1])
    return (first, last) if 1 <= first <= last else None


def trained_settings(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields that decide what a stage trains, flattened (``data.lm_length``): what a finished stage records and
    a later run compares before it reuses that stage."""
    flat: dict[str, Any] = {}

    def walk(d, prefix):
        for k, v in d.items():
            if not prefix and STAGE_ONLY_GROUPS.get(k, c.stage) != c.stage:
                continue  # another stage's settings: the hashes of stages trained before the group existed stay
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" not in NOT_HASHED:
                flat[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    walk(c.to_dict(), "")
    return flat


def settings_hash(c: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(json.dumps(trained_settings(c), sort_keys=True, default=str).encode()).hexdigest()[:16]


def reuse_problem(stage_dir, c: ml_collections.ConfigDict) -> str | None:
    """None when ``stage_dir`` holds a finished stage trained with the settings of ``c`` (reuse it), else why not:
    "unfinished", or the fields that differ (the caller refuses rather than silently keep an older result)."""
    stage_dir = pathlib.Path(stage_dir)
    summary = stage_dir / "summary.json"
    if not (stage_dir / "final").is_dir() or not summary.is_file():
        return "unfinished"
    old = json.loads(summary.read_text())
    if old.get("settings_hash") == settings_hash(c):
        return None
    before, now = old.get("settings") or {}, trained_settings(c)
    before = {RENAMED.get(k, k): v for k, v in before.items()}  # a stage recorded under a field's old name
    defaults = defaults_of(c)
    # a field the recorded stage predates, at its default here, is the old behaviour (a new field's default keeps it)
    added_since = {k for k in set(now) - set(before) if k in defaults and now[k] == defaults[k]}
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k) and k not in added_since)
    if before and not changed:
        return None  # the only differences are fields added since, at the defaults that keep the old behaviour
    shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
    return f"trained with other settings ({shown or 'recorded before settings were hashed'})"


def defaults_of(c: ml_collections.ConfigDict) -> dict[str, Any]:
    """``trained_settings`` of the base config for the stage of ``c``: the value each field has unless set."""
    d = base_config()
    d.stage = c.stage
    return trained_settings(d)
