"""Scaling sweeps: many training runs ("points") described as code, run one process each, tabulated.

A sweep file (``configs/sweeps/X.py``, big_vision style) defines ``get_config(arg)`` returning a ConfigDict:

``name``     the sweep's name
``stages``   the SHINE stages every point runs, in order (e.g. ``("pretrain",)``)
``bases``    a list of ``dict(name, config, stages=(), overrides={}, train={})``: a base model. ``config`` is a
             training config file (``configs/tiny.py``); ``overrides`` (``{"model.hidden_size": 64}``, the
             ``--config.*`` fields) apply to the base's own stages and to every point built on it; ``stages``
             (``("base_pretrain",)`` for a from-scratch base, ``()`` for a pretrained one) are trained **once per
             base** in ``W/bases/<base>/`` with the extra ``train`` overrides, and linked into each point's workdir.
``points``   a list of ``dict(name, base, overrides={})``
``eval``     (optional) ``dict(methods="none,shine", docs=8, max_new_tokens=16, batch_size=8)`` for ``--eval``

``run_sweep`` runs each point's stages as child processes (``python -m shine_jax.train``, never the CLI) in
``W/points/<name>/``, where training resumes from its Orbax checkpoints; a finished point (``result.json`` with
status ``finished``) is skipped; a point that fails (a bad shape found before it starts, or a non-zero exit) is
recorded with its one-line error and the sweep goes on. After every point ``W/results.csv`` and ``W/results.md``
are rewritten from all ``result.json`` files, so a killed sweep (or several shards writing into one workdir) still
leaves a complete table.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shine_jax import checkpoints
from shine_jax import stages as stages_lib
from shine_jax.errors import UserError
from shine_jax.fileutil import write_json_atomic
from shine_jax.train.config import (
    STAGES,
    ConfigError,
    apply_override,
    hyper_config,
    import_get_config,
    load_config,
    validate,
)
from shine_jax.train.pipeline import StageConflict, run_pipeline

SWEEP_FIELDS = ("name", "stages", "bases", "points", "eval")
EVAL_DEFAULTS = {"methods": "none,shine", "docs": 8, "max_new_tokens": 16, "batch_size": 8, "split": "test"}
SHINE_STAGES = stages_lib.HYPERNETWORK_STAGES


class SweepError(UserError):
    """A sweep file or a command line that cannot be run at all (the CLI prints one line and exits 2)."""


# ------------------------------------------------------------------------------------------------ definition
@dataclasses.dataclass
class Base:
    name: str
    config: str  # a training config file (no ':stage'; the stage is appended per run)
    stages: tuple[str, ...]
    overrides: dict[str, Any]
    train: dict[str, Any]


@dataclasses.dataclass
class Point:
    name: str
    base: Base
    overrides: dict[str, Any]

    def override_list(self) -> list[str]:
        return as_override_list({**self.base.overrides, **self.overrides})


@dataclasses.dataclass
class Sweep:
    name: str
    spec: str
    stages: tuple[str, ...]
    bases: dict[str, Base]
    points: list[Point]
    eval: dict[str, Any]

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise SweepError(f"sweep {self.name} has no point {name!r} (points: {', '.join(p.name for p in self.points)})")


def with_seed_repeats(points: list[dict], seeds: int) -> list[dict]:
    """A sweep file's ``:seeds=N``: ``points``, then every point again with training seeds 1..N-1 (named
    ``<name>_s<k>``, same base), to measure the seed-to-seed spread."""
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    return points + [dict(p, name=f"{p['name']}_s{k}", overrides={**p["overrides"], "seed": k})
                     for k in range(1, seeds) for p in points]


def as_override_list(overrides: dict[str, Any]) -> list[str]:
    """``{"shine.lora_rank": 4}`` -> ``["shine.lora_rank=4"]`` (values as Python literals, as ``--config.*``)."""
    return [f"{k}={v!r}" for k, v in overrides.items()]


def load_sweep(spec: str) -> Sweep:
    """``configs/sweeps/X.py[:arg]`` -> a checked ``Sweep``; anything malformed is a one-line ``SweepError``."""
    get_config, arg, file = import_get_config(spec, kind="sweep", error=SweepError)
    try:
        c = get_config(arg)
    except (KeyError, ValueError) as e:
        raise SweepError(f"{spec}: {str(e).strip(chr(39))}") from None
    c = c.to_dict() if hasattr(c, "to_dict") else dict(c)
    unknown = sorted(set(c) - set(SWEEP_FIELDS))
    if unknown:
        raise SweepError(f"{spec}: unknown sweep field {unknown[0]!r} (known: {', '.join(SWEEP_FIELDS)})")
    name = str(c.get("name") or file.stem)
    stages = tuple(c.get("stages") or ())
    bad = [s for s in stages if s not in SHINE_STAGES]
    if not stages or bad:
        raise SweepError(f"{spec}: 'stages' must be SHINE stages from {', '.join(SHINE_STAGES)}, got {stages}")
    bases = {}
    for i, b in enumerate(c.get("bases") or ()):
        b = dict(b)
        extra = sorted(set(b) - {"name", "config", "stages", "overrides", "train"})
        if extra or "name" not in b or "config" not in b:
            raise SweepError(f"{spec}: base #{i} must be dict(name, config, stages, overrides, train), got keys "
                             f"{sorted(b)}")
        if b["name"] in bases:
            raise SweepError(f"{spec}: two bases are named {b['name']!r}")
        config = _resolve_path(b["config"], file)
        bstages = tuple(b.get("stages") or ())
        if any(s not in STAGES for s in bstages):
            raise SweepError(f"{spec}: base {b['name']!r} has an unknown stage in {bstages}")
        bases[b["name"]] = Base(b["name"], config, bstages, dict(b.get("overrides") or {}), dict(b.get("train") or {}))
    if not bases:
        raise SweepError(f"{spec}: the sweep defines no bases")
    points, seen = [], set()
    for i, p in enumerate(c.get("points") or ()):
        p = dict(p)
        extra = sorted(set(p) - {"name", "base", "overrides"})
        if extra or "name" not in p or "base" not in p:
            raise SweepError(f"{spec}: point #{i} must be dict(name, base, overrides), got keys {sorted(p)}")
        pname = str(p["name"])
        if not pname or "/" in pname or pname.startswith(".") or pname != pname.strip():
            raise SweepError(f"{spec}: point name {pname!r} is not usable as a folder name")
        if pname in seen:
            raise SweepError(f"{spec}: two points are named {pname!r}")
        if p["base"] not in bases:
            raise SweepError(f"{spec}: point {pname!r} names base {p['base']!r}, which the sweep does not define "
                             f"(bases: {', '.join(bases)})")
        seen.add(pname)
        points.append(Point(pname, bases[p["base"]], dict(p.get("overrides") or {})))
    if not points:
        raise SweepError(f"{spec}: the sweep defines no points")
    ev = dict(EVAL_DEFAULTS, **dict(c.get("eval") or {}))
    if set(ev) - set(EVAL_DEFAULTS):
        raise SweepError(f"{spec}: unknown eval field(s) {sorted(set(ev) - set(EVAL_DEFAULTS))}")
    sweep = Sweep(name, spec, stages, bases, points, ev)
    for point in points:  # unknown fields / wrong types are mistakes in the sweep file: refuse to start
        for stage in point.base.stages:
            stage_config(point.base, stage, point.base.train, check=False)
        for stage in stages:
            stage_config(point.base, stage, point.overrides, check=False)
    return sweep


def _resolve_path(path: str, sweep_file: pathlib.Path) -> str:
    p = pathlib.Path(path)
    if p.is_absolute() or p.is_file():
        return str(p)
    for root in (sweep_file.parent, *sweep_file.resolve().parents):
        if (root / p).is_file():
            return str(root / p)
    raise SweepError(f"{sweep_file}: config file {path} does not exist")


def stage_config(base: Base, stage: str, extra: dict[str, Any], data_dir: str | None = None, check: bool = True):
    """The training config of one stage: the base's config file at ``stage`` + base overrides + ``extra``.

    Unknown fields and wrongly typed values raise ``SweepError`` (the sweep file is wrong); with ``check``, an
    inconsistent combination (e.g. a memory-token count that is not an integer) raises ``ConfigError``."""
    try:
        cfg = load_config(f"{base.config}:{stage}")
        for item in as_override_list({**base.overrides, **extra}):
            apply_override(cfg, item)
    except ConfigError as e:
        raise SweepError(f"base {base.name!r}, stage {stage}: {e}") from None
    if data_dir is not None and not cfg.data.dir:
        cfg.data.dir = data_dir
    if check:
        validate(cfg)
    return cfg


def child_overrides(base: Base, extra: dict[str, Any], data_dir: str) -> list[str]:
    overrides = {**base.overrides, **extra}
    overrides.setdefault("data.dir", data_dir)  # every point of a sweep shares one corpus and tokenizer
    return as_override_list(overrides)


def spec_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ statistics
def model_config_for(cfg, trained: list[pathlib.Path]):
    """The base architecture of a point: read from a trained folder when one exists (exact vocabulary, SHINE
    tokens included), else from the config (``model.preset``, an HF ``config.json`` or the scratch fields)."""
    from shine_jax.model.config import ModelConfig
    from shine_jax.plan import model_config_of

    for folder in trained:
        if checkpoints.is_model_folder(folder):  # a base folder
            return ModelConfig.from_dict(checkpoints.read_model_meta(folder)["model"])
        model = checkpoints.base_model_dict(folder)  # a SHINE folder: its base reference (or copy)
        if model is not None:
            return ModelConfig.from_dict(model)
    return model_config_of(cfg)


def point_stats(cfgs: dict[str, Any], trained: list[pathlib.Path]) -> dict[str, Any]:
    """Parameter counts (shapes only, nothing materialised), M and analytic FLOPs per step of each stage."""
    from flax import nnx

    from shine_jax.model.hypernet import Hypernetwork, num_memory_tokens
    from shine_jax.train import flops as flops_lib
    first = next(cfg for stage, cfg in cfgs.items() if not stages_lib.stage(stage).trains_base)
    mcfg = model_config_for(first, trained)
    hcfg = hyper_config(first)
    m = num_memory_tokens(mcfg, hcfg)
    state = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Hypernetwork(mcfg, hcfg, nnx.Rngs(0)))))
    count = lambda tree: int(sum(math.prod(x.shape) for x in _leaves(tree)))  # noqa: E731
    out = {"seed": first.seed, "hidden_size": mcfg.hidden_size, "num_layers": mcfg.num_layers,
           "vocab_size": mcfg.vocab_size,
           "lora_rank": hcfg.lora_rank, "metalora_rank": hcfg.metalora_rank, "m2p_layers": hcfg.m2p.num_layers,
           "memory_tokens": m, "params_base": mcfg.num_params(), "params_m2p": count(state["m2p"]),
           "params_metalora": count(state["metalora"]), "params_mem_tokens": count(state["mem_tokens"]),
           "params_lora": mcfg.num_layers * mcfg.lora_params_per_layer(hcfg.lora_rank)}
    for stage, cfg in cfgs.items():
        if stages_lib.stage(stage).trains_base:
            f = flops_lib.lm_step_flops(mcfg, cfg.batch_size, cfg.data.lm_length)
        else:
            h = hyper_config(cfg)
            f = flops_lib.shine_step_flops(mcfg, cfg.batch_size, cfg.data.context_length,
                                           cfg.data.conversation_length, m, h.m2p.num_layers, h.m2p.ffn_mult,
                                           h.lora_rank)
        out[f"{stage}_flops_per_step"] = f
        out[f"{stage}_steps"] = cfg.steps
    return out


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


def stage_record(stage_dir: pathlib.Path) -> dict[str, Any]:
    """What a finished stage measured (its ``summary.json``): validation loss/perplexity (initial and final), wall
    time, median step time."""
    s = json.loads((stage_dir / "summary.json").read_text())
    return {"val_loss_initial": s.get("initial_val_loss"), "val_loss": s.get("val_loss"),
            "val_ppl_initial": s.get("initial_val_ppl"), "val_ppl": s.get("val_ppl"), "wall_s": s.get("wall_s"),
            "step_s": s.get("step_s")}


# ------------------------------------------------------------------------------------------------ children
def run_child(argv: list[str], log_path: pathlib.Path, env: dict[str, str], result: pathlib.Path,
              progress: Callable[[], None] | None = None, every_s: float = 2.0) -> dict[str, Any]:
    """Run one entry point (``python -m shine_jax.train`` or ``.eval``) with stdout+stderr appended to
    ``log_path``; return its exit code, its own peak resident memory (``ru_maxrss`` of that child from
    ``wait4``) and what it wrote to ``result``: the stage summary, or on failure its one-line error. While it runs,
    ``progress()`` is called every ``every_s`` seconds (the sweep's live report of the child's metrics)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)  # a stale result of an earlier attempt must not be read as this one's
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        log.flush()
        start = time.time()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG if progress else 0)
                if pid:
                    break
                time.sleep(every_s)
                _report(progress)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    if progress:
        _report(progress)  # the rows written since the last look
    out = {"rc": proc.returncode, "peak_rss_mib": usage.ru_maxrss / 1024, "child_wall_s": time.time() - start}
    written = _read_json(result) or {}
    if proc.returncode:
        out["error"] = written.get("error") or (
            f"exit status {proc.returncode}" + (" (killed by a signal)" if proc.returncode < 0 else "")
            + f"; the traceback is in {log_path}")
    else:
        out["summary"] = written
    return out


def _report(progress: Callable[[], None]) -> None:
    """A live report never stops the child it reports on: a failure of its own is one line in the log."""
    try:
        progress()
    except Exception as e:  # noqa: BLE001 - progress is a courtesy
        print(f"[sweep] (live progress failed: {type(e).__name__}: {e})", file=sys.stderr)


class MetricsFollower:
    """The live report of a training child: each new row of its ``metrics.jsonl`` as one line (step of steps,
    loss or validation loss, elapsed time), so a sweep's console is not silent while a point trains. Rows there
    before the child started are not repeated; a resumed child rewrites the file up to its checkpoint, and only
    rows that differ from those already reported are new."""

    def __init__(self, path: pathlib.Path, steps: int, label: str, log: Callable[[str], None]):
        self.path, self.steps, self.label, self.log = path, steps, label, log
        self.seen, self.start = self._lines(), time.time()

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []  # not written yet
        return text[:text.rfind("\n") + 1].splitlines()

    def __call__(self) -> None:
        lines = self._lines()
        same = 0
        while same < min(len(lines), len(self.seen)) and lines[same] == self.seen[same]:
            same += 1
        for line in lines[same:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict):
                continue
            values = [f"{k} {row[k]:.4f}" for k in ("loss", "val_loss") if isinstance(row.get(k), (int, float))]
            self.log(f"[sweep] {self.label}: step {row.get('step')}/{self.steps} {', '.join(values)} "
                     f"({time.time() - self.start:.0f}s)")
        self.seen = lines


# ------------------------------------------------------------------------------------------------ runner
@dataclasses.dataclass
class Runner:
    sweep: Sweep
    workdir: pathlib.Path
    do_eval: bool = False
    log: Any = print
    env: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    _base_errors: dict[str, str | None] = dataclasses.field(default_factory=dict)

    @property
    def data_dir(self) -> str:
        return str(self.workdir / "data")

    def train_argv(self, config: str, stage: str, workdir: pathlib.Path, overrides: list[str], stats: pathlib.Path):
        return [sys.executable, "-m", "shine_jax.train", "--result", str(stats),
                "--config", f"{config}:{stage}", "--workdir", str(workdir), "--no-progress",
                *[f"--config.{o}" for o in overrides]]

    # -- stages in one folder, through train.pipeline: reused with the same settings, else trained (or resumed)
    def run_stages(self, base: Base, stages: Sequence[str], extra: dict, workdir: pathlib.Path,
                   label: str) -> dict[str, dict]:
        """``stages`` of ``base`` in ``workdir``, each in a child process unless finished with these settings;
        stage -> its stats (child rc, peak RSS and device memory, wall time, code). A failure or a stage finished
        with other settings raises ``StageFailed`` naming the stage (and its log)."""
        configs = {stage: stage_config(base, stage, extra, self.data_dir, check=False) for stage in stages}

        def reuse(stage, cfg):
            stats = workdir / f"{stage}.stats.json"
            return json.loads(stats.read_text()) if stats.is_file() else {"rc": 0}

        def train(stage, cfg):
            stats = workdir / f"{stage}.stats.json"
            argv = self.train_argv(base.config, stage, workdir, child_overrides(base, extra, self.data_dir), stats)
            code = code_state()
            follow = MetricsFollower(workdir / stage / "metrics.jsonl", cfg.steps, f"{label} {stage}", self.log)
            out = run_child(argv, workdir / f"{stage}.log", self.env, stats, progress=follow)
            out["code"] = code
            if out["rc"]:
                raise StageFailed(f"stage {stage}: {out['error']} (log: {workdir / (stage + '.log')})")
            summary = out.pop("summary")
            out.update(device_peak_mib=(summary.get("device_peak_bytes") or 0) / 2**20 or None,
                       platform=summary.get("platform"))
            write_json_atomic(stats, out)
            return out

        try:
            return run_pipeline(configs, workdir, train, reuse, log=lambda line: self.log(f"[sweep] {label}: {line}"))
        except StageConflict as e:
            raise StageFailed(str(e)) from None

    # -- a base: its stages trained once, under a file lock (several shards may need it at the same time)
    def ensure_base(self, base: Base) -> str | None:
        if base.name in self._base_errors:
            return self._base_errors[base.name]
        bdir = self.workdir / "bases" / base.name
        error = None
        if base.stages:
            from filelock import FileLock

            bdir.mkdir(parents=True, exist_ok=True)
            spec = {"config": base.config, "stages": base.stages, "overrides": base.overrides, "train": base.train}
            with FileLock(str(bdir) + ".lock"):
                error = _check_spec(bdir, spec)
                for stage in base.stages if not error else ():
                    try:
                        stage_config(base, stage, base.train, self.data_dir)
                    except ConfigError as e:
                        error = f"stage {stage}: {e}"
                        break
                if not error:
                    try:
                        self.run_stages(base, base.stages, base.train, bdir, f"base {base.name}")
                    except StageFailed as e:
                        error = str(e)
        self._base_errors[base.name] = error
        return error

    def point_done(self, point: Point) -> bool:
        rec = _read_json(self.workdir / "points" / point.name / "result.json")
        return bool(rec) and rec.get("status") == "finished" and (not self.do_eval or rec.get("eval_done", False))

    def run_point(self, point: Point) -> dict:
        pdir = self.workdir / "points" / point.name
        pdir.mkdir(parents=True, exist_ok=True)
        old = _read_json(pdir / "result.json") or {}
        rec: dict[str, Any] = {"name": point.name, "base": point.base.name, "status": "running",
                               "overrides": " ".join(point.override_list())}
        write_json_atomic(pdir / "result.json", {**old, **rec})
        try:
            rec.update(self._run_point(point, pdir))
            rec["status"] = "finished"
        except PointFailed as e:
            rec.update(e.partial, status="failed", error=str(e))
        write_json_atomic(pdir / "result.json", rec)
        return rec

    def _run_point(self, point: Point, pdir: pathlib.Path) -> dict:
        rec: dict[str, Any] = {}
        spec = {"base": point.base.name, "base_config": point.base.config, "base_overrides": point.base.overrides,
                "base_stages": point.base.stages, "base_train": point.base.train, "stages": self.sweep.stages,
                "overrides": point.overrides}
        error = _check_spec(pdir, spec)
        if error:
            raise PointFailed(error, rec)
        cfgs = {}
        try:  # a bad point (shapes that do not fit together) fails here, before any process starts
            for stage in point.base.stages:
                cfgs[stage] = stage_config(point.base, stage, point.base.train, self.data_dir)
            for stage in self.sweep.stages:
                cfgs[stage] = stage_config(point.base, stage, point.overrides, self.data_dir)
            rec.update(point_stats(cfgs, []))
        except (ConfigError, ValueError) as e:
            raise PointFailed(str(e).splitlines()[0], rec) from None
        error = self.ensure_base(point.base)
        if error:
            raise PointFailed(f"base {point.base.name} failed: {error}", rec)
        bdir = self.workdir / "bases" / point.base.name
        for stage in point.base.stages:  # the base's trained stages, shared by every point of that base
            link = pdir / stage
            if not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.relpath(bdir / stage, pdir), target_is_directory=True)
        trained = [bdir / s / "final" for s in point.base.stages]
        try:
            ran = self.run_stages(point.base, self.sweep.stages, point.overrides, pdir, f"point {point.name}")
        except StageFailed as e:
            raise PointFailed(str(e), rec) from None
        for stage, out in ran.items():
            trained.insert(0, pdir / stage / "final")
            rec[f"{stage}_peak_rss_mib"] = out.get("peak_rss_mib")
            rec[f"{stage}_device_peak_mib"] = out.get("device_peak_mib")
            rec["point_wall_s"] = rec.get("point_wall_s", 0.0) + (out.get("child_wall_s") or 0.0)
            rec["code"] = out.get("code")
        rec.update(point_stats(cfgs, trained))  # exact counts now that the trained folders exist
        for stage in (*point.base.stages, *self.sweep.stages):
            d = (bdir if stage in point.base.stages else pdir) / stage
            rec.update({f"{stage}_{k}": v for k, v in stage_record(d).items()})
            if stage in point.base.stages:
                stats = _read_json(bdir / f"{stage}.stats.json") or {}
                rec[f"{stage}_peak_rss_mib"] = stats.get("peak_rss_mib")
                rec[f"{stage}_device_peak_mib"] = stats.get("device_peak_mib")
        if self.do_eval:
            rec.update(self.run_eval(point, pdir, cfgs[self.sweep.stages[-1]]))
        return rec

    def eval_data(self, cfg) -> pathlib.Path:
        if cfg.data.jsonl_eval:
            return pathlib.Path(cfg.data.jsonl_eval)
        from shine_jax.data.corpus import write_jsonl
        from shine_jax.data.tfds_builder import load_split
        from shine_jax.train.loop import corpus_overrides

        split = self.sweep.eval["split"]
        out = self.workdir / "eval" / f"{split}_{self.sweep.eval['docs']}docs.jsonl"
        if not out.is_file():
            ds = load_split(pathlib.Path(cfg.data.dir) / "tfds", split, config=cfg.data.builder_config,
                            **corpus_overrides(cfg))
            write_jsonl([ds[i] for i in range(min(int(self.sweep.eval["docs"]), len(ds)))], out)
        return out

    def run_eval(self, point: Point, pdir: pathlib.Path, cfg) -> dict:
        ev = self.sweep.eval
        out_json = pdir / "eval" / "results.json"
        if not out_json.is_file():
            self.log(f"[sweep] point {point.name}: evaluating {ev['methods']} on {ev['docs']} documents")
            argv = [sys.executable, "-m", "shine_jax.eval", "--workdir", str(pdir),
                    "--data", str(self.eval_data(cfg)), "--methods", str(ev["methods"]), "--limit", str(ev["docs"]),
                    "--out", str(out_json), "--batch-size", str(ev["batch_size"]),
                    "--max-new-tokens", str(ev["max_new_tokens"]), "--no-progress",
                    "--result", str(pdir / "eval.result.json")]
            res = run_child(argv, pdir / "eval.log", self.env, pdir / "eval.result.json")
            if res["rc"]:
                raise PointFailed(f"eval: {res['error']} (log: {pdir / 'eval.log'})", {})
        results = json.loads(out_json.read_text())
        rec = {"eval_done": True, "eval_docs": None}
        for name, m in results["methods"].items():
            rec[f"f1_{name}"], rec[f"em_{name}"], rec["eval_docs"] = m["f1"], m["em"], m["documents"]
        return rec


class StageFailed(Exception):
    """A stage of a base or a point did not finish (its child failed, or its folder holds other settings)."""


class PointFailed(Exception):
    def __init__(self, message: str, partial: dict):
        super().__init__(message)
        self.partial = dict(partial)


def _check_spec(folder: pathlib.Path, spec: dict) -> str | None:
    """Record what a folder trains; refuse to continue it with different settings (its checkpoints would not fit)."""
    path = folder / "spec.json"
    old = _read_json(path)
    trained = any((folder / s).is_dir() and not (folder / s).is_symlink() for s in STAGES)
    if old is not None and old.get("hash") != spec_hash(spec) and trained:
        return (f"{folder} was trained with other settings ({old.get('spec')}); delete it or use another "
                "sweep workdir")
    write_json_atomic(path, {"hash": spec_hash(spec), "spec": spec})
    return None


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------------------------ tables
FIXED_COLUMNS = ["name", "status", "base", "seed", "hidden_size", "num_layers", "vocab_size", "lora_rank",
                 "metalora_rank", "m2p_layers", "memory_tokens", "params_base", "params_m2p", "params_metalora",
                 "params_mem_tokens", "params_lora"]
STAGE_COLUMNS = ["steps", "flops_per_step", "step_s", "wall_s", "peak_rss_mib", "device_peak_mib",
                 "val_loss_initial", "val_loss", "val_ppl_initial", "val_ppl"]


def columns(sweep: Sweep) -> list[str]:
    stages = [s for s in STAGES if s in {st for b in sweep.bases.values() for st in b.stages} | set(sweep.stages)]
    cols = FIXED_COLUMNS + [f"{s}_{c}" for s in stages for c in STAGE_COLUMNS]
    methods = [m.strip() for m in str(sweep.eval["methods"]).split(",") if m.strip()]
    cols += [f"{k}_{m}" for m in methods for k in ("f1", "em")]
    return cols + ["eval_docs", "point_wall_s", "error", "overrides", "code"]


def collect(sweep: Sweep, workdir: pathlib.Path) -> list[dict]:
    rows = []
    for p in sweep.points:
        rec = _read_json(workdir / "points" / p.name / "result.json") or {"name": p.name, "base": p.base.name,
                                                                           "status": "pending"}
        rows.append(rec)
    return rows


def write_tables(sweep: Sweep, workdir: pathlib.Path) -> list[dict]:
    rows = collect(sweep, workdir)
    cols = columns(sweep)
    tmp = workdir / f".results.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in cols})
    os.replace(tmp, workdir / "results.csv")
    md = workdir / f".results.md.{os.getpid()}.tmp"
    md.write_text(markdown(sweep, rows))
    os.replace(md, workdir / "results.md")
    return rows


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _fmt(v, spec: str = "") -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return format(v, spec) if spec else str(v)


def _millions(v) -> str:
    return "-" if v is None else f"{v / 1e6:.3f}M" if v < 1e9 else f"{v / 1e9:.2f}B"


def markdown(sweep: Sweep, rows: list[dict]) -> str:
    codes = sorted({r["code"] for r in rows if r.get("code")})
    main = sweep.stages[0]
    methods = [m.strip() for m in str(sweep.eval["methods"]).split(",") if m.strip()]
    has_eval = any(r.get("eval_done") for r in rows)
    head = ["point", "status", "base params", "r", "M2P depth", "Meta r", "M", "M2P params", "Meta LoRA params",
            "LoRA params", f"{main} GFLOPs/step", "step (s)", "peak RSS (MiB)"]
    for s in sweep.stages:
        head += [f"{s} val loss (start -> end)", f"{s} val ppl"]
    if has_eval:
        head += [f"F1 {m}" for m in methods]
    lines = [f"# sweep {sweep.name}", "", f"`{sweep.spec}`; one row per point, full columns in results.csv.", "",
             *([f"Code the points were trained with (`code` column): {'; '.join(codes)}.", ""] if codes else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    errors = []
    for r in rows:
        flops = r.get(f"{main}_flops_per_step")
        cells = [r["name"], r.get("status", "pending"), _millions(r.get("params_base")), _fmt(r.get("lora_rank")),
                 _fmt(r.get("m2p_layers")), _fmt(r.get("metalora_rank")), _fmt(r.get("memory_tokens")),
                 _millions(r.get("params_m2p")), _millions(r.get("params_metalora")), _millions(r.get("params_lora")),
                 _fmt(None if flops is None else flops / 1e9, ".2f"), _fmt(r.get(f"{main}_step_s"), ".3f"),
                 _fmt(r.get(f"{main}_peak_rss_mib"), ".0f")]
        for s in sweep.stages:
            a, b = r.get(f"{s}_val_loss_initial"), r.get(f"{s}_val_loss")
            cells += [f"{_fmt(a, '.4f')} -> {_fmt(b, '.4f')}" if b is not None else "-",
                      _fmt(r.get(f"{s}_val_ppl"), ".2f")]
        if has_eval:
            cells += [_fmt(r.get(f"f1_{m}"), ".3f") for m in methods]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if r.get("status") == "failed":
            errors.append(f"- **{r['name']}** failed: {r.get('error')}")
    if errors:
        lines += ["", *errors]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ entry
def select_points(sweep: Sweep, names: str | None = None, point_index: int | None = None,
                  num_shards: int = 1, shard_index: int = 0) -> list[Point]:
    points = sweep.points
    if names:
        points = [sweep.point(n.strip()) for n in names.split(",") if n.strip()]
    if point_index is not None:
        if not 0 <= point_index < len(points):
            raise SweepError(f"--point-index {point_index} is out of range: the sweep has {len(points)} points "
                             f"(0..{len(points) - 1})")
        points = [points[point_index]]
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise SweepError(f"--shard-index must lie in 0..num_shards-1, got {shard_index} of {num_shards}")
    return points[shard_index::num_shards]


def run_sweep(spec: str, workdir: str | os.PathLike, names: str | None = None, do_eval: bool = False,
              point_index: int | None = None, num_shards: int = 1, shard_index: int = 0, dry_run: bool = False,
              log=print) -> list[dict]:
    sweep = load_sweep(spec)
    points = select_points(sweep, names, point_index, num_shards, shard_index)
    workdir = pathlib.Path(workdir).absolute()
    env = dict(os.environ)  # the children get the caller's environment (and its accelerators) unchanged
    if "jax" not in sys.modules:  # this process only counts shapes: keep it off the accelerators the children use
        os.environ["JAX_PLATFORMS"] = "cpu"
    if dry_run:
        shown: set[str] = set()
        return [dry_run_row(sweep, p, workdir, log, shown) for p in points]
    workdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / "sweep.json", {"spec": spec, "name": sweep.name, "stages": sweep.stages,
                                          "points": [dataclasses.asdict(p) for p in sweep.points]})
    runner = Runner(sweep, workdir, do_eval, log, env)
    write_tables(sweep, workdir)
    with _terminate_as_exit():
        _run_points(sweep, runner, points, log)
    rows = write_tables(sweep, workdir)
    failed = [r["name"] for r in rows if r.get("status") == "failed"]
    log(f"[sweep] done: {workdir / 'results.csv'}, {workdir / 'results.md'}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return rows


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (a cluster scheduler's preemption) unwinds like Ctrl-C, so the running child is killed too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_points(sweep: Sweep, runner: Runner, points: list[Point], log) -> None:
    t0 = time.time()
    for i, point in enumerate(points, 1):
        if runner.point_done(point):
            log(f"[sweep] {i}/{len(points)} {point.name}: finished earlier, skipped")
            continue
        log(f"[sweep] {i}/{len(points)} {point.name} (base {point.base.name}; "
            f"{' '.join(as_override_list(point.overrides))})")
        rec = runner.run_point(point)
        write_tables(sweep, runner.workdir)
        main = sweep.stages[-1]
        if rec["status"] == "finished":
            log(f"[sweep] {point.name}: finished ({rec.get('point_wall_s', 0):.0f}s of training), {main} val_loss "
                f"{_fmt(rec.get(f'{main}_val_loss_initial'), '.4f')} -> {_fmt(rec.get(f'{main}_val_loss'), '.4f')}")
        else:
            log(f"[sweep] {point.name}: FAILED: {rec['error']}")
    log(f"[sweep] {len(points)} point(s) in {(time.time() - t0) / 60:.1f} min")


def code_state() -> str:
    """The git commit of the code that trains a stage, and the files changed since (recorded per point: a sweep is
    only comparable with itself when the training code stays the same while it runs)."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "shine_jax", "configs"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return (head or "unknown") + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def dry_run_row(sweep: Sweep, point: Point, workdir: pathlib.Path, log=print, shown: set | None = None) -> dict:
    """Print what a point would run and its planned size (shapes only; nothing is trained)."""
    row = {"name": point.name, "base": point.base.name}
    try:
        cfgs = {s: stage_config(point.base, s, point.base.train, str(workdir / "data")) for s in point.base.stages}
        cfgs.update({s: stage_config(point.base, s, point.overrides, str(workdir / "data")) for s in sweep.stages})
        row.update(point_stats(cfgs, []))
        main = sweep.stages[0]
        log(f"{point.name}: base {point.base.name} ({_millions(row['params_base'])} params), r={row['lora_rank']} "
            f"M2P depth {row['m2p_layers']} Meta r={row['metalora_rank']} M={row['memory_tokens']}; M2P "
            f"{_millions(row['params_m2p'])}, Meta LoRA {_millions(row['params_metalora'])}, LoRA "
            f"{_millions(row['params_lora'])}; {main} {row[f'{main}_flops_per_step']:.3e} FLOPs/step, mesh "
            f"{tuple(cfgs[main].mesh)}")
    except (ConfigError, ValueError) as e:
        row["error"] = str(e).splitlines()[0]
        log(f"{point.name}: BAD POINT: {row['error']}")
    shown = set() if shown is None else shown
    for s in point.base.stages if point.base.name not in shown else ():  # a base is trained once: shown once
        log("    $ " + shlex.join(["shine-jax", "train", "--config", f"{point.base.config}:{s}", "--workdir",
                                   str(workdir / "bases" / point.base.name),
                                   *[f"--config.{o}" for o in child_overrides(point.base, point.base.train,
                                                                               str(workdir / "data"))]]))
    shown.add(point.base.name)
    for s in sweep.stages:
        log("    $ " + shlex.join(["shine-jax", "train", "--config", f"{point.base.config}:{s}", "--workdir",
                                   str(workdir / "points" / point.name),
                                   *[f"--config.{o}" for o in child_overrides(point.base, point.overrides,
                                                                               str(workdir / "data"))]]))
    return row
