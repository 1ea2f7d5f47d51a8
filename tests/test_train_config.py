"""Config validation: unknown or inconsistent fields fail at start with a message naming the field."""

import pathlib

import pytest

from shine_jax import cli
from shine_jax.train.config import RENAMED, ConfigError, hyper_config, load_config, validate
from tests.conftest import REPO

TINY = f"{REPO}/configs/tiny.py"


@pytest.mark.parametrize("name", ["tiny", "smollm2_135m", "qwen3_0p6b", "qwen3_1p7b", "qwen3_8b"])
def test_shipped_configs_validate(name):
    cfg = load_config(f"{REPO}/configs/{name}.py:pretrain")
    assert cfg.stage == "pretrain" and cfg.steps > 0 and cfg.batch_size > 0


def test_paper_configs_carry_the_paper_settings():
    cfg = load_config(f"{REPO}/configs/qwen3_8b.py:ift_mqa")
    assert (cfg.shine.lora_rank, cfg.shine.metalora_rank, cfg.shine.m2p.num_layers, cfg.shine.m2p.num_heads) == (8, 128, 4, 32)
    assert (cfg.data.context_length, cfg.data.conversation_length, cfg.batch_size) == (1150, 2380, 32)
    assert cfg.optim.lr == 3e-5 and cfg.model.compute_dtype == "bfloat16"


@pytest.mark.parametrize("override,message", [
    ("optim.learning_rate=1", "unknown config field 'optim.learning_rate'"),
    ("nonsense=1", "unknown config field 'nonsense'"),
    ("model.foo.bar=1", "unknown config field 'model.foo'"),
    ("grad_accum=3", "'grad_accum': 3 does not divide batch_size"),
    ("stage='finetune'", "'stage'"),
    ("model.intermediate_size=250", "'shine.lora_rank': lora_rank 4 gives .* LoRA numbers per layer, not a multiple"),
    ("steps='many'", "'steps' expects int"),
    ("optim.warmup_steps=100000", "'optim.warmup_steps'"),
    ("profile_steps='5,2'", "'profile_steps': must be FIRST,LAST"),
    ("data.read_threads=-1", "'data.read_threads': must be an integer"),
])
def test_bad_fields_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(f"{TINY}:pretrain", ["model.source='scratch'", override])  # shapes from the fields


def test_inconsistent_stage_and_source():
    with pytest.raises(ConfigError, match="'stage'.*base_pretrain"):
        load_config(f"{REPO}/configs/smollm2_135m.py:pretrain", ["stage='base_pretrain'"])
    cfg = load_config(f"{TINY}:pretrain")
    with pytest.raises(ConfigError, match="'mesh'"):
        validate(cfg, num_devices=3) if cfg.update({"mesh": (2, 1, 1)}) is None else None


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    assert cli.main(["train", "--config", f"{TINY}:pretrain", "--workdir", str(tmp_path), "--config.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "error: unknown config field 'bogus'"
    assert cli.main(["train", "--config", f"{tmp_path}/none.py", "--workdir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_preset_shapes_are_checked_before_loading_weights():
    with pytest.raises(ConfigError, match=r"'shine.lora_rank': lora_rank 4 gives 40704 LoRA numbers .* M = 40704/576 is not an integer"):
        load_config(f"{REPO}/configs/smollm2_135m.py:pretrain", ["shine.lora_rank=4"])
    with pytest.raises(ConfigError, match="'model.preset'"):
        load_config(f"{REPO}/configs/smollm2_135m.py:pretrain", ["model.preset='smollm3'"])


def test_pipeline_stages_and_per_stage_overrides(tmp_path):
    import pathlib

    from shine_jax.train.config import check_stages, pipeline_stages, split_stage_overrides

    assert pipeline_stages(TINY) == ("pretrain", "ift_mqa", "ift_1qa")  # on the shipped base, models/tiny_base
    assert pipeline_stages(f"{REPO}/configs/smollm2_135m.py") == ("pretrain", "ift_mqa")
    assert pipeline_stages(f"{REPO}/configs/qwen3_0p6b.py") == ("pretrain", "ift_mqa", "ift_1qa")  # no PIPELINE
    tiny_text = pathlib.Path(TINY).read_text()
    no_pipeline = tmp_path / "scratch.py"
    scratch_line = 'c.model.source, c.model.hf_dir = ("scratch", "") if c.stage == "base_pretrain" else ("hf", TINY_BASE)'
    assert scratch_line in tiny_text
    no_pipeline.write_text(tiny_text.replace("PIPELINE = (", "_UNUSED = (").replace(
        scratch_line, 'c.model.source, c.model.hf_dir = "scratch", ""'))
    assert pipeline_stages(str(no_pipeline))[0] == "base_pretrain"  # a scratch base is trained first
    bad = tmp_path / "bad.py"
    bad.write_text(tiny_text.replace("PIPELINE = (", "PIPELINE = ('finetune', "))
    with pytest.raises(ConfigError, match="PIPELINE must list stages"):
        pipeline_stages(str(bad))
    for stages, message in [((), "must list stages"), (("ift_mqa", "pretrain"), "in the order"),
                            (("pretrain", "pretrain"), "each stage once"), (("base_pretrain",), "SHINE stage")]:
        with pytest.raises(ConfigError, match=message):
            check_stages(stages, "--stages")

    routed = split_stage_overrides(["--config.ift_mqa.steps=70", "data.dir='d'", "config.pretrain.optim.lr=0.1"],
                                   ("pretrain", "ift_mqa"))
    assert routed == {"pretrain": ["data.dir='d'", "optim.lr=0.1"], "ift_mqa": ["steps=70", "data.dir='d'"]}
    configs = {s: load_config(f"{TINY}:{s}", routed[s]) for s in routed}
    assert (configs["pretrain"].steps, configs["ift_mqa"].steps) == (load_config(f"{TINY}:pretrain").steps, 70)
    assert (configs["pretrain"].optim.lr, configs["ift_mqa"].optim.lr) == (0.1, load_config(f"{TINY}:ift_mqa").optim.lr)
    with pytest.raises(ConfigError, match="names stage 'ift_1qa', which this run does not train"):
        split_stage_overrides(["ift_1qa.steps=3"], ("pretrain", "ift_mqa"))
    for item in ("stage='ift_mqa'", "pretrain.stage='ift_mqa'"):
        with pytest.raises(ConfigError, match="sets each config's stage itself"):
            split_stage_overrides([item], ("pretrain", "ift_mqa"))


# ----------------------------------------------------------------------------------- every config file loads
CONFIG_FILES = sorted(pathlib.Path(REPO, "configs").glob("*.py"))
SWEEP_FILES = sorted(pathlib.Path(REPO, "configs", "sweeps").glob("*.py"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_loads_and_validates_every_stage(path):
    from shine_jax.train.config import STAGES, import_config_module, validate

    module = import_config_module(str(path))
    stages = getattr(module, "PIPELINE", None) or tuple(s for s in STAGES if s != "base_pretrain")
    for stage in stages:
        cfg = load_config(f"{path}:{stage}")
        assert cfg.stage == stage
        validate(cfg)  # without a device count: the mesh is checked where it runs


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_sweep_file_loads(path):
    from shine_jax import sweep as sweep_lib

    sweep = sweep_lib.load_sweep(str(path))
    assert sweep.points and all(p.base.name in sweep.bases for p in sweep.points)


def test_parse_arg_types_fields_and_names_bad_tokens():
    from shine_jax.train.config import parse_arg

    a = parse_arg("rank,size=1p7b,steps=100,quick", positional=("axis",), axis="size", size="0p6b", steps=0,
                  quick=False)
    assert (a.axis, a.size, a.steps, a.quick) == ("rank", "1p7b", 100, True)
    assert parse_arg(None, seeds=1).seeds == 1
    for bad, word in (("seeds=x", "seeds='x'"), ("colour=red", "'colour'"), ("extra", "'extra'")):
        with pytest.raises(ConfigError, match=word):
            parse_arg(bad, seeds=1)


def test_a_finished_stage_is_reused_only_with_the_same_settings(tmp_path):
    import json

    from shine_jax.train.config import reuse_problem, settings_hash, trained_settings

    cfg = load_config(f"{TINY}:ift_mqa")
    stage_dir = tmp_path / "ift_mqa"
    assert reuse_problem(stage_dir, cfg) == "unfinished"
    (stage_dir / "final").mkdir(parents=True)
    (stage_dir / "summary.json").write_text(json.dumps({"settings_hash": settings_hash(cfg),
                                                        "settings": trained_settings(cfg)}))
    assert reuse_problem(stage_dir, cfg) is None
    cfg.log_every, cfg.checkpoint_every = 1, 7  # logging and checkpointing do not change what was trained
    assert reuse_problem(stage_dir, cfg) is None
    steps = cfg.steps
    cfg.steps = steps + 200
    assert reuse_problem(stage_dir, cfg) == f"trained with other settings (steps: {steps} -> {steps + 200})"
    # a stage recorded before a field existed is reused while the field keeps its default (the old behaviour)
    cfg.steps = steps
    old = {k: v for k, v in trained_settings(cfg).items() if k != "shine.m2p.memory_norm"}
    (stage_dir / "summary.json").write_text(json.dumps({"settings_hash": "older", "settings": old}))
    assert reuse_problem(stage_dir, cfg) is None
    cfg.shine.m2p.memory_norm = "rmsnorm"
    assert reuse_problem(stage_dir, cfg) == "trained with other settings (shine.m2p.memory_norm: None -> 'rmsnorm')"
    # a stage recorded under the fields' old names (shine.m2p_layers, ...) is the same stage
    cfg.shine.m2p.memory_norm = "none"
    renamed = {next((o for o, n in RENAMED.items() if n == k), k): v for k, v in trained_settings(cfg).items()}
    assert "shine.m2p_layers" in renamed
    (stage_dir / "summary.json").write_text(json.dumps({"settings_hash": "older", "settings": renamed}))
    assert reuse_problem(stage_dir, cfg) is None


def test_an_old_field_name_is_told_its_new_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config field 'shine.m2p_layers'; it is now 'shine.m2p.num_layers'"):
        load_config(f"{TINY}:pretrain", ["shine.m2p_layers=3"])
    cfg = load_config(f"{TINY}:ift_mqa", ["shine.m2p.num_layers=3", "shine.m2p.memory_norm=rmsnorm"])
    hyper = hyper_config(cfg)
    assert (hyper.m2p.num_layers, hyper.m2p.memory_norm, hyper.lora_rank) == (3, "rmsnorm", cfg.shine.lora_rank)


def test_micro_batch_must_split_over_the_data_and_fsdp_axes():
    from shine_jax.train.config import validate

    cfg = load_config(f"{TINY}:pretrain", ["batch_size=8", "grad_accum=1", "mesh=(-1, 1, 1)"])
    validate(cfg, num_devices=8)
    with pytest.raises(ConfigError, match=r"'batch_size': the micro-batch batch_size / grad_accum = 8 is not "
                                          r"divisible by the data x fsdp mesh axes \(16 x 1 = 16 devices\)"):
        validate(cfg, num_devices=16)
    cfg = load_config(f"{TINY}:pretrain", ["batch_size=16", "grad_accum=2", "mesh=(2, 4, 1)"])
    validate(cfg, num_devices=8)
    cfg = load_config(f"{TINY}:pretrain", ["batch_size=16", "grad_accum=4", "mesh=(2, 4, 1)"])
    with pytest.raises(ConfigError, match="= 4 is not divisible"):
        validate(cfg, num_devices=8)


def test_a_validation_split_smaller_than_one_batch_is_an_error():
    import grain
    import numpy as np

    from shine_jax.train import loop

    cfg = load_config(f"{TINY}:pretrain", ["batch_size=4"])
    with pytest.raises(ConfigError, match=r"fewer than one batch \(4 examples per host\)"):
        loop.evaluate(None, None, None, grain.MapDataset.source([{"x": np.zeros(3)}] * 3), cfg, None)


def test_each_qwen3_config_reads_its_own_base_path_and_the_paper_data(monkeypatch):
    monkeypatch.setenv("SHINE_JAX_QWEN3_8B_DIR", "/models/q8")
    monkeypatch.setenv("SHINE_JAX_QWEN3_0P6B_DIR", "/models/q06")
    monkeypatch.setenv("SHINE_JAX_PAPER_DATA", "/data/paper")
    assert load_config(f"{REPO}/configs/qwen3_8b.py:pretrain").model.hf_dir == "/models/q8"
    assert load_config(f"{REPO}/configs/qwen3_0p6b.py:pretrain").model.hf_dir == "/models/q06"
    assert load_config(f"{REPO}/configs/qwen3_1p7b.py:pretrain").model.hf_dir == "checkpoints/Qwen3-1.7B"
    stages = {s: load_config(f"{REPO}/configs/qwen3_8b.py:{s}").data for s in ("pretrain", "ift_mqa", "ift_1qa")}
    assert stages["pretrain"].pretrain_files == "/data/paper/pretrain/*.parquet"
    assert (stages["ift_mqa"].jsonl_train, stages["ift_1qa"].jsonl_train) == ("/data/paper/ift_pwc.jsonl",
                                                                              "/data/paper/ift_c1qa.jsonl")
    assert {d.jsonl_eval for d in stages.values()} == {"/data/paper/eval.jsonl"}


def test_a_base_folder_that_is_not_the_named_preset_is_refused(tmp_path):
    from shine_jax.model.presets import PRESETS, preset_mismatch
    from shine_jax.train.loop import load_base
    from tests.conftest import make_hf_model

    assert preset_mismatch("qwen3-8b", PRESETS["qwen3-8b"]) == ""
    assert preset_mismatch("qwen3-8b", PRESETS["qwen3-1.7b"]).startswith("hidden_size 2048 (preset 4096)")
    hf_dir, _ = make_hf_model(tmp_path, "llama", tie=True)
    cfg = load_config(f"{TINY}:pretrain", [f"model.hf_dir='{hf_dir}'", "model.preset='qwen3-0.6b'", "shine.lora_rank=8"])
    with pytest.raises(ConfigError, match=r"does not hold the qwen3-0.6b the config names: family llama"):
        load_base(cfg, tmp_path)


def test_a_scratch_base_check_names_its_field():
    with pytest.raises(ConfigError, match=r"config field 'model.head_dim': head_dim must be even"):
        load_config(f"{TINY}:pretrain", ["model.source=scratch", "model.head_dim=31"])
    with pytest.raises(ConfigError, match=r"config field 'model.family': unsupported model family 'gpt'"):
        load_config(f"{TINY}:pretrain", ["model.source=scratch", "model.family=gpt"])
