"""Shared fixtures: tiny random HF models (built with transformers in PyTorch) and tolerance helpers."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The tests are compile-bound (small shapes, many distinct programs, several processes): XLA's backend optimisation
# level 0 halves their compile time (the 8-device train-step check: 132 -> 67 s on one core) at the same numerics
# within every tolerance here. Set before JAX starts a backend, and inherited by the subprocesses the tests start.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = pathlib.Path(os.environ.get("SHINE_JAX_FIXTURES", REPO / "tests" / "fixtures" / "shine_reference"))

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-6)


def ws(text: str) -> str:
    """Text as the tiny tokenizer decodes it, compared up to whitespace: single spaces, special tokens apart."""
    return " ".join(re.sub(r"(<\|\w+\|>)", r" \1 ", text).split())


def max_rel_err(ours, ref, where=None) -> float:
    """max |ours - ref| / max |ref| over the selected entries (``where`` broadcasts over the last axis)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if where is not None:
        where = np.broadcast_to(np.asarray(where, bool)[..., None], ref.shape) if where.ndim < ref.ndim else where
        ours, ref = ours[where], ref[where]
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def make_hf_model(tmp_path: pathlib.Path, family: str, tie: bool, seed: int = 0, **overrides):
    """Save a random tiny HF model (norm weights perturbed so they are not all ones) and return its dir."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kw = dict(TINY, tie_word_embeddings=tie, **overrides)
    if family == "qwen3":
        kw.setdefault("rope_theta", 1e6)
        config = transformers.Qwen3Config(**kw)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        kw.setdefault("rope_theta", 1e4)
        config = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    out = tmp_path / f"{family}_{'tied' if tie else 'untied'}_{seed}"
    model.save_pretrained(out)
    return out, model.eval()


def left_padded_batch(vocab: int, lengths: list[int], total: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), total), np.int64)
    mask = np.zeros((len(lengths), total), np.int64)
    for r, n in enumerate(lengths):
        ids[r, total - n:] = rng.integers(1, vocab, n)
        mask[r, total - n:] = 1
    return ids, mask


def shared_tmp(tmp_path_factory) -> pathlib.Path:
    """A directory all xdist workers of this test run share (the per-worker base temp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache per test run, shared by the workers and the subprocesses they start:
    several tests compile the same training step in different processes (a run, its killed copy and its resume)."""
    cache = shared_tmp(tmp_path_factory) / "jax_compilation_cache"
    settings = {"jax_compilation_cache_dir": str(cache), "jax_persistent_cache_min_compile_time_secs": 0.5}
    import jax

    for name, value in settings.items():
        os.environ[name.upper()] = str(value)  # for the subprocesses
        jax.config.update(name, value)  # for this process, where jax may already be imported
    return cache


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"SHINE reference fixtures not found at {FIXTURES}")
    return FIXTURES


STAGES = ("base_pretrain", "pretrain", "ift_mqa", "ift_1qa")
STEPS = {"base_pretrain": 30, "pretrain": 20, "ift_mqa": 20, "ift_1qa": 20}
FAST = ["optim.lr=0.005", "log_every=5", "eval_every=100", "eval_batches=2"]


def _train_stages(tmp_path_factory, stages) -> pathlib.Path:
    """``stages`` of one small tiny-model run, each built once per test run even with several xdist workers (the
    first worker to need a stage trains it under a file lock in the directory the workers share; the others reuse
    it). Every fixture below is a prefix of ``STAGES`` in this one workdir."""
    from filelock import FileLock

    from shine_jax.train.loop import run_stage
    from tests.train_utils import small_config

    shared = shared_tmp(tmp_path_factory)
    wd = shared / "tiny_run"
    with FileLock(str(shared / "tiny_run.lock")):
        for stage in stages:
            if not (wd / f"complete-{stage}").exists():
                run_stage(small_config(stage, STEPS[stage], trained_workdir_extra(stage, wd), data_dir=wd / "data"),
                          wd, progress=False)
                (wd / f"complete-{stage}").touch()
    return wd


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
    """All four stages of a small tiny model."""
    return _train_stages(tmp_path_factory, STAGES)


@pytest.fixture(scope="session")
def base_workdir(tmp_path_factory):
    """Its first stage (``base_pretrain``: a base model trained from scratch, with its checkpoints), all that the
    fault tests train, so that ``pytest -m faults`` trains one small stage. In the whole suite it is the same folder
    as ``trained_workdir``: tests of this fixture read only its first stage."""
    return _train_stages(tmp_path_factory, STAGES[:1])


@pytest.fixture(scope="session")
def untrained_shine(base_workdir, tmp_path_factory) -> pathlib.Path:
    """A SHINE folder with a fresh (untrained) hypernetwork on ``base_workdir``'s base: enough for the commands
    whose writing, not whose answers, a test checks (``internalize``, ``eval``)."""
    from filelock import FileLock

    from shine_jax.base_model import BaseModel
    from shine_jax.shine import Shine
    from shine_jax.train.config import hyper_config
    from tests.train_utils import small_config

    out = shared_tmp(tmp_path_factory) / "untrained_shine"
    with FileLock(str(out) + ".lock"):
        if not out.is_dir():
            cfg = small_config("pretrain", data_dir=base_workdir / "data")
            base = BaseModel.load(base_workdir / "base_pretrain" / "final")
            Shine.create(base, hyper_config(cfg), max_evidence_length=cfg.data.context_length).save(out)
    return out


def trained_workdir_extra(stage: str, wd) -> list[str]:
    """The overrides of each stage of ``trained_workdir`` beyond ``small_config``'s."""
    # ift_1qa starts from the pretrain result here (init_from), so that its own improvement is measurable in 20
    # steps; test_train's resume test runs the chained ift_mqa -> ift_1qa path.
    return FAST + ([f"init_from='{wd / 'pretrain' / 'final'}'"] if stage == "ift_1qa" else []) + (
        ["profile_steps='2,3'"] if stage == "ift_1qa" else []) + (  # the profiler hook, in a stage faults skip
        ["tracker='wandb'"] if stage == "ift_mqa" and WANDB else [])  # a stage logging to an offline W&B run


WANDB = importlib.util.find_spec("wandb") is not None  # the [wandb] extra (requirements-test.txt installs it)




# The order in which the files are handed to the pytest-xdist workers (scripts/test passes --dist loadfile
# --no-loadscope-reorder): the longest first, so that the two workers finish together, and test_train.py first of
# all, since its first test builds the trained fixture (~90 s) that later files need, while the other worker runs
# long files that do not need it. Files not named keep their collection order, after these.
LONGEST_FIRST = ("test_train.py", "test_sharding.py", "test_sweep.py", "test_memory3_train.py", "test_smollm2.py",
                 "test_shine_fixture.py", "test_shine_variants.py", "test_faults.py", "test_retrieval.py",
                 "test_eval.py", "test_wheel.py", "test_memory3.py", "test_losses.py", "test_train_step.py",
                 "test_eval_demo.py", "test_smollm2_torch.py", "test_generation.py", "test_serve.py",
                 "test_text_corpus.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept
