"""Faults and hostile input: one writer per workdir, stale locks, adapter folders that stay inside --out, and the
one-line errors of the CLI for each."""

import json
import os
import socket
import subprocess
import sys

import pytest

from shine_jax import cli
from shine_jax.fileutil import LOCK_NAME, WorkdirBusyError, workdir_lock
from tests.conftest import REPO

HOLD = "import sys, time; from shine_jax.fileutil import workdir_lock\n" \
       "with workdir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)"


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusyError, match=f"process {holder.pid} on {socket.gethostname()}"):
            with workdir_lock(tmp_path):
                pass
        # the CLI: one error line, exit 2, before any weight is loaded
        proc = subprocess.run([sys.executable, "-m", "shine_jax.cli", "train", "--config",
                               f"{REPO}/configs/tiny.py:pretrain", "--workdir", str(tmp_path), "--no-progress"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "in use by process" in last
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match=f"stale lock .* process {pid}"):
        with workdir_lock(tmp_path):
            assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
            with workdir_lock(tmp_path):  # re-entrant within the process
                pass
            assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(WorkdirBusyError, match="process 1 on elsewhere"):
        with workdir_lock(tmp_path):
            pass


@pytest.mark.parametrize("ids,expected", [
    (["../x", "/etc/passwd", "a b", "..", "ok-1.2"], ["_x", "_etc_passwd", "a_b", "doc00003", "ok-1.2"]),
    (["a/b", "c"], ["a_b", "c"]),
])
def test_adapter_folder_names_stay_inside_the_output_folder(tmp_path, ids, expected):
    names = cli.adapter_folder_names(ids)
    assert names == expected
    for name in names:
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_ids_that_collide_after_sanitising_are_refused():
    with pytest.raises(ValueError, match="both map to the adapter folder 'a_b'"):
        cli.adapter_folder_names(["a/b", "a b"])


def test_plan_with_no_devices_is_one_error_line(capsys):
    assert cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain", "--devices", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --devices must be >= 1, got 0"


@pytest.mark.parametrize("raise_it,expected", [
    (lambda: (_ for _ in ()).throw(OSError(28, "No space left on device", "/out/adapter/x.safetensors")),
     "error: writing /out/adapter/x.safetensors: no space left on the device; free space"),
    (lambda: (_ for _ in ()).throw(OSError(30, "Read-only file system", "/ro/results.json")),
     "error: writing /ro/results.json: read-only file system; free space"),
])
def test_disk_full_and_read_only_outputs_are_one_error_line(monkeypatch, capsys, raise_it, expected):
    monkeypatch.setattr(cli, "cmd_plan", lambda args, overrides: raise_it())
    assert cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected)


def test_wrapped_disk_full_error_is_found_in_the_cause_chain(monkeypatch, capsys):
    def fail(args, overrides):
        try:
            raise OSError(28, "No space left on device")
        except OSError as e:
            raise RuntimeError('Failed to finalize writing of split "train"') from e

    monkeypatch.setattr(cli, "cmd_plan", fail)
    assert cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no space left on the device; free space")
    # a message-only wrapper (safetensors, Orbax) is recognised too
    monkeypatch.setattr(cli, "cmd_plan", lambda a, o: (_ for _ in ()).throw(
        RuntimeError("SafetensorError: Error while serializing: IoError(No space left on device (os error 28))")))
    assert cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"]) == 2
    assert "no space left on the device (RuntimeError: SafetensorError" in capsys.readouterr().err


def test_other_internal_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "cmd_plan", lambda a, o: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"])
