"""One training stage end to end: data, model, sharded jitted steps, checkpoints with exact resume, metrics.

``run_stage(cfg, workdir)`` trains ``cfg.stage`` in ``workdir/<stage>/`` and leaves the result in
``workdir/<stage>/final`` (a BaseModel folder for ``base_pretrain``, a Shine folder otherwise), from which the
next stage starts. Running the same command again after a crash resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import time
from typing import Any

import grain
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from shine_jax import checkpoints, multihost
from shine_jax import sharding as shd
from shine_jax import stages as stages_lib
from shine_jax.base_model import BaseModel, state_shardings
from shine_jax.data import buckets, pipelines
from shine_jax.fileutil import workdir_lock, write_json_atomic
from shine_jax.model.config import ModelConfig
from shine_jax.model.objective import shine_loss
from shine_jax.model.presets import preset_mismatch
from shine_jax.shine import Shine, load_base_from, with_shine_tokens
from shine_jax.train import checkpoint as ckpt
from shine_jax.train import flops as flops_lib
from shine_jax.train import optimizer as optim
from shine_jax.train.config import (
    ConfigError,
    hyper_config,
    memory3_settings,
    model_config,
    profile_range,
    settings_hash,
    trained_settings,
    validate,
)
from shine_jax.train.metrics import MetricsLog, Throughput, TrainMetrics
from shine_jax.train.preemption import Preempted, watch_sigterm
from shine_jax.train.step import (
    init_state,
    make_eval_step,
    make_train_step,
    train_state_shardings,
)

KILL_ENV = "SHINE_JAX_KILL_AFTER_STEP"  # tests: SIGKILL the process right after this step (crash simulation)
TERM_ENV = "SHINE_JAX_SIGTERM_AFTER_STEP"  # tests: SIGTERM the process right after this step (preemption)


# ---------------------------------------------------------------------------------------------------- setup
def data_dir_of(cfg, workdir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cfg.data.dir) if cfg.data.dir else workdir / "data"


def checkpoint_dir_of(cfg, stage_dir: pathlib.Path):
    """Where a stage's Orbax checkpoints go: ``<stage_dir>/checkpoints``, or ``<cfg.checkpoint_dir>/<stage>`` (a
    local path or ``gs://bucket/prefix``; an ``etils.epath.Path``, which Orbax writes natively)."""
    return ckpt.resolve_dir(cfg.checkpoint_dir) / cfg.stage if cfg.checkpoint_dir else stage_dir / "checkpoints"


def load_records(cfg, workdir: pathlib.Path, split: str) -> list[dict]:
    """Document-QA records of a split: the user's JSONL, or the bundled corpus through its tfds builder."""
    from shine_jax.data import corpus

    user = cfg.data.jsonl_train if split == "train" else cfg.data.jsonl_eval
    if user:
        return corpus.read_jsonl(user)
    from shine_jax.data import tfds_builder

    records = tfds_builder.read_split(data_dir_of(cfg, workdir) / "tfds", split, config=cfg.data.builder_config,
                                      **corpus_overrides(cfg))
    if not records:
        raise ConfigError(f"the {split} corpus is empty")
    return records


def corpus_overrides(cfg) -> dict:
    return {"num_people": cfg.data.num_people,
            "docs_per_split": {"train": cfg.data.train_docs, "validation": cfg.data.eval_docs,
                               "test": cfg.data.eval_docs}}


def stage_of(cfg) -> stages_lib.Stage:
    return stages_lib.stage(cfg.stage)


def load_base(cfg, workdir: pathlib.Path) -> BaseModel:
    m = cfg.model
    if stage_of(cfg).trains == "memory_base" and cfg.init_from:  # a base folder to go on from (HF or ours)
        from shine_jax.eval.memory3 import load_reading_base

        base = load_reading_base(cfg.init_from, m.compute_dtype)
        return with_runtime(base, cfg)
    if m.source == "scratch":
        if stage_of(cfg).trains_base and cfg.init_from:  # continue training an earlier base
            base = BaseModel.load(pathlib.Path(cfg.init_from), compute_dtype=m.compute_dtype)
            return with_runtime(base, cfg)
        if stage_of(cfg).trains_base:
            from shine_jax.data.tokenizer import tiny_tokenizer

            tok = tiny_tokenizer(data_dir_of(cfg, workdir) / "tokenizer", vocab_size=cfg.data.tokenizer_vocab)
            return with_runtime(BaseModel.random(model_config(cfg, len(tok)), seed=cfg.seed, tokenizer=tok), cfg)
        prev = previous_final(cfg, workdir)
        if prev is not None:  # the base the previous stage was trained on (its reference, or its own copy)
            base = load_base_from(checkpoints.resolve_base(prev), m.compute_dtype, frozen_dtype(cfg))
        else:
            final = workdir / stages_lib.BASE_STAGE / "final"
            if not final.is_dir():
                raise ConfigError(f"stage {cfg.stage!r} of a scratch model needs {final}; run stage "
                                  f"{stages_lib.BASE_STAGE} first")
            base = BaseModel.load(final, dtype=frozen_dtype(cfg), compute_dtype=m.compute_dtype)
    else:
        if m.source == "smollm2":
            from shine_jax.convert.gguf import materialize_smollm2

            hf_dir = materialize_smollm2(pathlib.Path("artifacts") / "smollm2-135m-instruct")
        else:
            hf_dir = m.hf_dir
        base = BaseModel.from_hf(hf_dir, dtype=frozen_dtype(cfg) or "float32", compute_dtype=m.compute_dtype)
        problem = m.preset and preset_mismatch(m.preset, base.cfg)
        if problem:  # e.g. a Qwen3-8B config pointed at a Qwen3-1.7B folder
            raise ConfigError(f"{hf_dir} does not hold the {m.preset} the config names: {problem}; point "
                              f"model.hf_dir at a {m.preset} folder, or set model.preset to ''")
        base = with_shine_tokens(base)
    return with_runtime(base, cfg)


def frozen_dtype(cfg) -> str | None:
    """The dtype a frozen base is read in, when the config asks for another than float32: read so from the file on,
    a bfloat16 Qwen3-8B is never held as 32 GB of float32 on its way in (None: as before, float32)."""
    m = cfg.model
    return m.frozen_param_dtype if stage_of(cfg).freezes_base and m.frozen_param_dtype != "float32" else None


def with_runtime(base: BaseModel, cfg) -> BaseModel:
    """The config's runtime choices for a loaded base: remat, attention path, and a frozen base's storage dtype."""
    if cfg.model.attention == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"config field 'model.attention': cudnn runs on CUDA GPUs only, and this run's backend is "
                          f"{jax.default_backend()}; use xla, auto or reference")
    base.set_remat(cfg.model.remat)
    base.set_attention(cfg.model.attention)
    if stage_of(cfg).freezes_base and cfg.model.frozen_param_dtype != "float32":
        base.set_param_dtype(cfg.model.frozen_param_dtype)
    return base


def previous_final(cfg, workdir: pathlib.Path) -> pathlib.Path | None:
    if cfg.init_from:
        return pathlib.Path(cfg.init_from)
    prev = stage_of(cfg).previous
    if prev is None:
        return None
    path = workdir / prev / "final"
    if not path.is_dir():
        raise ConfigError(f"stage {cfg.stage!r} starts from {path}; run stage {prev!r} first (or set init_from)")
    return path


@dataclasses.dataclass
class Task:
    """What a stage trains: params (pure dict), the frozen state, the loss, the groups, how to save the result."""
    params: Any
    frozen: Any
    loss_fn: Any
    labels: Any
    param_shardings: Any
    finalize: Any  # (params, out_dir) -> None
    step_flops: float
    lr_mults: Any = None  # per-parameter lr multipliers (None: all 1)
    eval_loss_fn: Any = None  # the validation loss when it is not the training loss
    teacher: bool = False  # the training batches carry the KL loss's teacher fields
    flops_at: Any = None  # {field: padded length} of a (bucketed) batch -> its model FLOPs (None: step_flops)

    def batch_flops(self, batch: dict) -> float:
        if self.flops_at is None:
            return self.step_flops
        return self.flops_at({k: np.shape(v)[-1] for k, v in batch.items()})


def decoder_task(base: BaseModel, mesh, loss, flops: float) -> Task:
    """Every weight of the base trained with ``loss(decoder, batch) -> (loss, labelled tokens)``; the result is a
    base model folder."""
    graphdef = base.graphdef
    shardings = nnx.to_pure_dict(state_shardings(base.state, mesh))

    def loss_fn(params, frozen, batch):
        return loss(nnx.merge(graphdef, params), batch)

    def finalize(params, out_dir):
        base.set_params(multihost.to_host(params))  # gathers the shards of other hosts too
        base.save(out_dir, overwrite=True)

    return Task(nnx.to_pure_dict(base.state), None, loss_fn,
                optim.param_labels(nnx.to_pure_dict(base.state), optim.decoder_group), shardings, finalize, flops)


def lm_task(cfg, base: BaseModel, mesh) -> Task:
    task = decoder_task(base, mesh, lambda d, b: d.lm_loss(b["input_ids"], b["attention_mask"], b["labels"]),
                        flops_lib.lm_step_flops(base.cfg, cfg.batch_size, cfg.data.lm_length))
    task.flops_at = lambda n: flops_lib.lm_step_flops(base.cfg, cfg.batch_size, n["input_ids"])
    return task


def memory3_task(cfg, base: BaseModel, mesh) -> Task:
    """memory3_train: the whole base learns to read (and write) Memory3 memories (``memory3.read_loss``; the
    memories are encoded by the weights being trained, with gradient)."""
    from shine_jax.eval.memory3 import memory_layers, read_loss

    s = memory3_settings(cfg)
    rows = cfg.batch_size * s.memories  # the references encoded per step, in the memory layers only
    ref_len = s.reference_tokens + 8  # the prefix: a few tokens
    share = memory_layers(base.cfg) / base.cfg.num_layers
    flops = (flops_lib.lm_step_flops(base.cfg, cfg.batch_size, cfg.data.conversation_length)
             + 3 * share * flops_lib.decoder_forward_flops(base.cfg, rows * ref_len, ref_len, False))
    return decoder_task(base, mesh, lambda d, b: read_loss(d, b, s.top_k), flops)


def stage_task(cfg, base: BaseModel, mesh, workdir: pathlib.Path) -> Task:
    trains = stage_of(cfg).trains
    if trains == "memory_base":
        return memory3_task(cfg, base, mesh)
    return lm_task(cfg, base, mesh) if trains == "base" else shine_task(cfg, base, mesh, workdir)


def shine_task(cfg, base: BaseModel, mesh, workdir: pathlib.Path) -> Task:
    hcfg = hyper_config(cfg)
    shine = Shine.create(base, hcfg, seed=cfg.seed, max_evidence_length=cfg.data.context_length)
    prev = previous_final(cfg, workdir) if workdir is not None else None  # None: a fresh hypernetwork
    if prev is not None:  # only the hypernetwork is read: load_base has the base already
        old_cfg, old, _ = Shine.read_hyper(prev)
        trained_on = checkpoints.base_model_dict(prev)
        if trained_on is not None and ModelConfig.from_dict(trained_on) != base.cfg:
            raise ConfigError(f"init_from {prev} was trained on another base model (hidden size "
                              f"{trained_on.get('hidden_size')}, vocabulary {trained_on.get('vocab_size')})")
        if old_cfg.m2p.memory_norm != hcfg.m2p.memory_norm:
            raise ConfigError(f"config field 'shine.m2p.memory_norm': {hcfg.m2p.memory_norm!r}, but {prev} was trained "
                              f"with {old_cfg.m2p.memory_norm!r}")
        params = shine.hyper_params()
        # the IFT stages' extra Meta LoRA goes on from ift_mqa to ift_1qa; pretrain has none, so ift_mqa starts it
        carried = ("mem_tokens", "metalora", "m2p") + (("extra_metalora",) if "extra_metalora" in old else ())
        for key in carried:
            if key in params:
                params[key] = old[key]
        shine.set_hyper_params(params)
    hgraph = shine.hyper_graphdef
    dgraph = base.graphdef
    shardings = nnx.to_pure_dict(state_shardings(shine.hyper_state, mesh))

    def loss_fn(params, frozen, batch):
        return shine_loss(nnx.merge(dgraph, frozen), nnx.merge(hgraph, params), batch, cfg.shine.loss,
                          cfg.shine.kl_weight)

    def nll_fn(params, frozen, batch):  # validation: the answer NLL whatever the training loss, comparable
        return shine_loss(nnx.merge(dgraph, frozen), nnx.merge(hgraph, params), batch)

    def finalize(params, out_dir):
        shine.set_hyper_params(multihost.to_host(params))
        shine.save(out_dir, overwrite=True)

    params = nnx.to_pure_dict(shine.hyper_state)
    labels, mults = shine_param_groups(cfg, params)
    distil = cfg.shine.loss != "nll"

    def flops_at(n: dict) -> float:
        ctx, conv = n["evidence_ids"], n["input_ids"]
        flops = flops_lib.shine_step_flops(base.cfg, cfg.batch_size, ctx, conv, shine.num_memory_tokens,
                                           hcfg.m2p.num_layers, hcfg.m2p.ffn_mult, hcfg.lora_rank)
        if distil:  # the teacher's forward pass (no backward), vocabulary logits on the conversation's positions
            t = n["teacher_input_ids"]
            flops += (flops_lib.decoder_forward_flops(base.cfg, cfg.batch_size * t, t, False)
                      + 2.0 * cfg.batch_size * conv * base.cfg.hidden_size * base.cfg.vocab_size)
        return flops

    full = {"evidence_ids": cfg.data.context_length, "input_ids": cfg.data.conversation_length,
            "teacher_input_ids": pipelines.teacher_length(cfg.data.context_length, cfg.data.conversation_length)}
    return Task(params, base.state, loss_fn, labels, shardings, finalize, flops_at(full),
                lr_mults=mults, eval_loss_fn=nll_fn if distil else None, teacher=distil, flops_at=flops_at)


def shine_param_groups(cfg, params) -> tuple[Any, Any]:
    """(optimizer group labels, learning-rate multipliers or None) of the hypernetwork's parameters: what a SHINE
    stage trains and how, shared by training and ``plan`` so both build the same optimizer."""
    freeze_meta = hyper_config(cfg).extra_metalora_rank > 0
    labels = optim.param_labels(params, lambda names: optim.hypernet_group(names, cfg.shine.train_mem_tokens,
                                                                           freeze_meta))
    return labels, optim.lr_mults(params, lambda names: optim.hypernet_lr_mult(names, cfg.optim))


# ---------------------------------------------------------------------------------------------------- data
def batched_iterator(ds, per_host_batch: int, grouping: int = 0, seed: int = 0, read_threads: int = 0):
    """Batches of ``ds`` as a checkpointable iterator; ``grouping`` > 0: batches of similar length
    (``buckets.LengthGroupedBatches`` over windows of that many batches); ``read_threads`` > 0: that many threads
    make up to two batches each ahead (0: each batch is made when asked for, see ``data.read_threads``)."""
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * read_threads)
    if grouping:
        if isinstance(ds, grain.IterDataset):
            raise ConfigError("config field 'data.length_grouping': a streamed text corpus (data.pretrain_files) "
                              "cannot be grouped by length; set it to 0 (data.length_buckets still applies)")
        return iter(buckets.LengthGroupedBatches(ds, per_host_batch, grouping, seed).dataset().to_iter_dataset(options))
    batched = ds.batch(per_host_batch, drop_remainder=True)
    return iter(batched if isinstance(batched, grain.IterDataset) else batched.to_iter_dataset(options))


def to_global(batch: dict, cfg, mesh) -> dict:
    """Host batch ``[b, ...]`` -> global arrays ``[grad_accum, micro, ...]`` sharded over data x fsdp; with
    ``data.length_buckets`` the padded fields are cut to a bucket length first (``data.buckets``)."""
    if cfg.data.length_buckets and stage_of(cfg).dataset in BUCKETED_DATASETS:
        batch = buckets.trim_batch(batch, cfg.data.length_buckets, _agree_lengths)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        v = v.reshape(cfg.grad_accum, v.shape[0] // cfg.grad_accum, *v.shape[1:])
        global_shape = (v.shape[0], v.shape[1] * jax.process_count(), *v.shape[2:])
        spec = shd.logical_to_spec((None, "batch") + (None,) * (v.ndim - 2), global_shape, mesh)
        out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v, global_shape)
    return out


# the datasets whose batches are left-padded field groups only (memory3's rows carry per-chunk arrays as well)
BUCKETED_DATASETS = ("lm", "recon_comp", "multi_qa", "single_qa")


def _agree_lengths(need: dict[str, int]) -> dict[str, int]:
    """Every host cuts its batch to the longest any host needs (one global array shape)."""
    if jax.process_count() == 1:
        return need
    keys = sorted(need)
    longest = multihost_utils.process_allgather(np.asarray([need[k] for k in keys], np.int64)).max(axis=0)
    return {k: int(v) for k, v in zip(keys, longest)}


def count_tokens(batch: dict) -> int:
    masks = [batch[k] for k in ("evidence_mask", "attention_mask") if k in batch]
    return int(sum(np.asarray(m).sum() for m in masks))


def memory3_datasets(cfg, workdir: pathlib.Path, tok, train_records, eval_records, shard: dict):
    """memory3_train's (train, validation) datasets (``data.memory3_data``): the continual-LM pool's neighbours
    come from the evaluation's embedder, once per data build (kept in ``<data dir>/memory3``)."""
    from shine_jax.data import memory3_data
    from shine_jax.eval.sentence_encoder import SentenceEncoder

    m, s = cfg.memory3, memory3_settings(cfg)
    docs = memory3_data.lm_documents(train_records, m.lm_docs) if m.lm_share > 0 else []
    pool = memory3_data.LmPool.build(tok, docs, s, lambda texts: SentenceEncoder()(texts),  # loaded if not kept
                                     data_dir_of(cfg, workdir) / "memory3")
    length = cfg.data.conversation_length
    train = memory3_data.train_dataset(tok, pool, s, length, m.lm_share, m.fresh_max_people, cfg.seed, **shard)
    return train, memory3_data.eval_dataset(tok, eval_records, s, length, cfg.seed + 1000, **shard)


# ---------------------------------------------------------------------------------------------------- main
def run_stage(cfg, workdir: str | os.PathLike, progress: bool = True) -> dict:
    validate(cfg, jax.device_count())
    workdir = pathlib.Path(workdir).absolute()
    stage_dir = workdir / cfg.stage
    stage_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    mesh = shd.make_mesh(cfg.mesh)
    # one writer per workdir (process 0 of a multi-host run holds it for all)
    lock = workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock, jax.set_mesh(mesh):  # activations are pinned to the batch sharding inside the mesh context
        return _run_stage(cfg, workdir, stage_dir, mesh, t_start, progress)


def _run_stage(cfg, workdir: pathlib.Path, stage_dir: pathlib.Path, mesh, t_start: float, progress: bool) -> dict:
    if cfg.batch_size % jax.process_count():
        raise ConfigError(f"config field 'batch_size': {cfg.batch_size} is not divisible by {jax.process_count()} hosts")

    base = load_base(cfg, workdir)
    base.shard(mesh)
    task = stage_task(cfg, base, mesh, workdir)
    tok = base.tokenizer

    streamed = stage_of(cfg).dataset == "recon_comp" and bool(cfg.data.pretrain_files)  # text shards instead
    train_records = [] if streamed else load_records(cfg, workdir, "train")
    eval_records = load_records(cfg, workdir, "validation")
    pool = [r["context"] for r in train_records] if cfg.data.distractors else None
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    warm_rows = round(cfg.data.lm_copy_warmup * cfg.steps) * (cfg.batch_size // jax.process_count()) \
        if stage_of(cfg).dataset == "lm" else 0
    if stage_of(cfg).dataset == "memory3":
        train_ds, eval_ds = memory3_datasets(cfg, workdir, tok, train_records, eval_records, shard)
    else:
        train_ds = pipelines.stage_dataset(cfg.stage, train_records, tok, cfg.data, cfg.seed, distractor_pool=pool,
                                           teacher=task.teacher, copy_warmup_rows=warm_rows, **shard)
        eval_ds = pipelines.stage_dataset(cfg.stage, eval_records, tok, cfg.data, cfg.seed + 1000,
                                          distractor_pool=[r["context"] for r in eval_records] if pool else None,
                                          repeat=False, **shard)
    per_host = cfg.batch_size // jax.process_count()
    grouping = cfg.data.length_grouping if stage_of(cfg).dataset in BUCKETED_DATASETS else 0
    train_it = batched_iterator(train_ds, per_host, grouping, cfg.seed + jax.process_index(),
                                cfg.data.read_threads)

    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels, task.lr_mults)
    params = jax.device_put(task.params, task.param_shardings)
    state_sh = train_state_shardings(tx, params, task.param_shardings, mesh)
    state = jax.jit(lambda p: init_state(p, tx), out_shardings=state_sh)(params)
    frozen_sh = None if task.frozen is None else jax.tree.map(lambda x: x.sharding, task.frozen)
    step_fn = jax.jit(make_train_step(task.loss_fn, tx), in_shardings=(state_sh, frozen_sh, None),
                      out_shardings=(state_sh, None), donate_argnums=(0,))
    eval_fn = jax.jit(make_eval_step(task.eval_loss_fn or task.loss_fn))

    checkpointer = ckpt.StageCheckpointer(checkpoint_dir_of(cfg, stage_dir), cfg.keep_checkpoints)
    signature = ckpt.model_signature(task.params)
    def same_model(meta):
        mismatch = ckpt.describe_mismatch(meta["signature"], signature)
        if mismatch or meta.get("stage") != cfg.stage:
            raise ConfigError(f"{checkpointer.directory} holds a checkpoint of a different model "
                              f"({mismatch or meta.get('stage')}); use another workdir (or checkpoint_dir)")

    start = 0
    restored = checkpointer.restore_latest_good(ckpt.abstract_like(state), train_it, same_model)
    if restored is not None:
        start, state, _ = restored
    tracker = cfg.tracker if jax.process_index() == 0 else "none"  # one tracker run per stage, not per host
    log = MetricsLog(stage_dir, resume_step=start, tracker=tracker, run_name=f"{cfg.name}:{cfg.stage}",
                     project=cfg.tracker_project)
    meta = {"stage": cfg.stage, "signature": signature, "config": cfg.to_dict()}

    initial_eval = evaluate(eval_fn, state["params"], task.frozen, eval_ds, cfg, mesh) if start == 0 else {}
    log.hparams(cfg.to_dict(), initial_eval)
    if initial_eval:
        log.write(0, initial_eval)
    faults = {int(os.environ[env]): sig for env, sig in ((KILL_ENV, signal.SIGKILL), (TERM_ENV, signal.SIGTERM))
              if env in os.environ}  # tests: step -> the signal this process sends itself after it
    with watch_sigterm(checkpointer.manager) as preemption:
        step, state, last_eval, step_times = _train_steps(
            cfg, task, state, start, train_it, step_fn, eval_fn, eval_ds, mesh, checkpointer, meta, log, progress,
            preemption, faults)
    checkpointer.close()
    log.close()
    if not np.isfinite(last_eval.get("val_loss", 0.0)):  # a diverged stage leaves no final/ to build on
        raise ConfigError(f"stage {cfg.stage} diverged: validation loss {last_eval['val_loss']} at step {step} "
                          f"(no final/ written; lower optim.lr, or check the data)")
    task.finalize(state["params"], stage_dir / "final")
    summary = {"config": cfg.name, "stage": cfg.stage, "steps": cfg.steps, "resumed_from": start,
               "wall_s": time.time() - t_start, "skipped_steps": int(state["skipped"]), **last_eval,
               **{f"initial_{k}": v for k, v in initial_eval.items()},
               "settings_hash": settings_hash(cfg), "settings": trained_settings(cfg),
               "step_s": median_step_time(step_times), "platform": jax.devices()[0].platform,
               "device_peak_bytes": device_peak_bytes()}
    write_json_atomic(stage_dir / "summary.json", summary)
    return summary


def _train_steps(cfg, task, state, start, train_it, step_fn, eval_fn, eval_ds, mesh, checkpointer, meta, log,
                 progress, preemption, faults):
    """Steps start + 1 .. cfg.steps: logging, validation, checkpoints. -> (last step, state, last validation,
    step times)."""
    bar = _progress(cfg, start, progress)
    window, throughput, step_times = None, Throughput(), []
    last_eval = {}
    step = start
    trace, tracing = profile_range(cfg.profile_steps), False
    for step in range(start + 1, cfg.steps + 1):
        host_batch = next(train_it)
        if trace and step == trace[0]:  # TensorBoard's profile plugin reads <logdir>/plugins/profile
            jax.profiler.start_trace(str(log.directory / "tensorboard"))
            tracing = True
        global_batch = to_global(host_batch, cfg, mesh)
        state, m = step_fn(state, task.frozen, global_batch)
        if tracing and step == min(trace[1], cfg.steps):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            tracing = False
        throughput.add(count_tokens(host_batch) * jax.process_count(), task.batch_flops(global_batch))
        window = TrainMetrics.single_from_model_output(**{k: m[k] for k in ("loss", "grad_norm")}) \
            if window is None else window.merge(TrainMetrics.single_from_model_output(
                **{k: m[k] for k in ("loss", "grad_norm")}))
        if step % cfg.log_every == 0 or step == cfg.steps:
            tok_s, steps_s, flops_s = throughput.rates()
            step_times.append(1.0 / max(steps_s, 1e-12))
            scalars = {k: float(v) for k, v in window.compute().items()}
            scalars.update(lr=optim.last_lr(cfg.optim, cfg.steps, state["opt_state"]), tokens_per_s=tok_s, model_flops_per_s=flops_s,
                           skipped_steps=int(state["skipped"]))
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_eval = evaluate(eval_fn, state["params"], task.frozen, eval_ds, cfg, mesh)
                scalars.update(last_eval)
                throughput.rates()  # evaluation time does not count as training throughput
            log.write(step, scalars)
            window = None
            if bar is not None:
                bar.set_postfix(loss=f"{scalars['loss']:.3f}", **({"val": f"{last_eval['val_loss']:.3f}"} if last_eval else {}))
        saved = False
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            saved = checkpointer.save(step, state, train_it, meta)
        if bar is not None:
            bar.update(1)
        if step in faults:
            if faults[step] == signal.SIGKILL:
                checkpointer.wait()  # a crash after the last checkpoint was written, not during it
            os.kill(os.getpid(), faults[step])
        if step < cfg.steps and preemption.requested(step):
            stopped_at(step, state, train_it, meta, checkpointer, log, bar, saved)
    if bar is not None:
        bar.close()
    return step, state, last_eval, step_times


def stopped_at(step, state, train_it, meta, checkpointer, log, bar, saved: bool) -> None:
    """SIGTERM: a checkpoint of this very step (kept even between ``checkpoint_every`` steps), then one line."""
    saved = saved or checkpointer.save(step, state, train_it, meta, force=True)
    checkpointer.close()  # waits for the asynchronous save
    log.close()
    if bar is not None:
        bar.close()
    where = f"checkpoint of step {step} saved in {checkpointer.directory}" if saved else \
        "no checkpoint saved (non-finite state); the last good one stays"
    raise Preempted(f"stopped by SIGTERM after step {step}: {where}; run the same command to resume")


def median_step_time(times: list[float]) -> float | None:
    """Median seconds per step over the logged windows, without the first one (it holds the compilation)."""
    times = sorted(times[1:])
    if not times:
        return None
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])


def device_peak_bytes() -> int | None:
    """The accelerators' peak memory in use (``memory_stats``; GPUs and TPUs report it, CPUs do not)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices()]
    return max(peaks, default=0) or None


def evaluate(eval_fn, params, frozen, eval_ds, cfg, mesh) -> dict:
    per_host = cfg.batch_size // jax.process_count()
    it = batched_iterator(eval_ds, per_host)
    total, count, batches = 0.0, 0, 0
    for _ in range(cfg.eval_batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        t, n = eval_fn(params, frozen, to_global(batch, cfg, mesh))
        total, count, batches = total + float(t), count + int(n), batches + 1
    if not batches:  # a validation loss of 0.0 would look like a perfect model
        raise ConfigError(f"the validation split holds fewer than one batch ({per_host} examples per host); lower "
                          f"batch_size or give more validation data (data.eval_docs, data.jsonl_eval)")
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": float(np.exp(min(loss, 50.0)))}


def _progress(cfg, start: int, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"{cfg.name}:{cfg.stage}", unit="step", dynamic_ncols=True)
