"""Faults and hostile input: one writer per workdir, stale locks, adapter folders that stay inside --out, and the
one-line errors of the CLI for each."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from shine_jax import cli
from shine_jax.fileutil import LOCK_NAME, WorkdirBusyError, workdir_lock
from tests.conftest import REPO

pytestmark = pytest.mark.faults

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


BUILD = """
import sys
from shine_jax.train.loop import load_records
from tests.train_utils import small_config
cfg = small_config("base_pretrain", 2, data_dir=sys.argv[1])
print(len(load_records(cfg, sys.argv[1], "train")), flush=True)
"""


def test_two_processes_building_one_data_split_take_turns(tmp_path):
    """Two processes start the same data build in one data dir at once: one builds, the other waits for it and
    reuses the finished split (tfds alone races on its incomplete.* rename)."""
    data = tmp_path / "data"
    builders = [subprocess.Popen([sys.executable, "-c", BUILD, str(data)], cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [b.communicate(timeout=300) for b in builders]
    for b, (_, err) in zip(builders, outs):
        assert b.returncode == 0, err[-2000:]
    assert outs[0][0] == outs[1][0] and int(outs[0][0]) > 0
    versions = [p for p in data.rglob("1.0.0*") if p.is_dir()]
    assert len(versions) == 1 and not [p for p in data.rglob("*") if "incomplete" in p.name], sorted(data.rglob("*"))


def test_a_demo_on_a_workdir_in_use_is_one_error_line(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["demo", "--workdir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"in use by process {holder.pid}" in err[0], err
    finally:
        holder.kill()
        holder.wait()


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
     "error: writing /out/adapter/x.safetensors: no space left on the device ("),
    (lambda: (_ for _ in ()).throw(OSError(30, "Read-only file system", "/ro/results.json")),
     "error: writing /ro/results.json: read-only file system ("),
])
def test_disk_full_and_read_only_outputs_are_one_error_line(monkeypatch, capsys, raise_it, expected):
    monkeypatch.setattr(cli, "cmd_plan", lambda args, overrides: raise_it())
    assert cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected) and "MB free there); free space or choose" in err[0], err


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


def test_a_full_disk_outside_the_output_is_named_where_it_happened(tmp_path):
    """A stage writing its workdir fills the disk of its checkpoint_dir elsewhere: the line names that file and
    the free space there, not the workdir; inside the workdir, the workdir is named as the output."""
    from shine_jax.errors import user_message, writing

    for failing, named in ((tmp_path / "bucket" / "run" / "8" / "state", False), (tmp_path / "wd" / "x", True)):
        with pytest.raises(OSError) as info:
            with writing(tmp_path / "wd", resumable=True):
                raise OSError(28, "No space left on device", str(failing))
        message = user_message(info.value)
        assert message.startswith(f"writing {failing}: no space left on the device (")
        assert (f"output {tmp_path / 'wd'}" in message) == named and "MB free there" in message
        assert message.endswith("(training resumes from its last good checkpoint)")


def test_other_internal_errors_keep_their_traceback(monkeypatch):
    monkeypatch.setattr(cli, "cmd_plan", lambda a, o: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["plan", "--config", f"{REPO}/configs/tiny.py:pretrain"])


# ------------------------------------------------------------------------------------------------ disk full
def _records(workdir, n):
    from shine_jax.data.tfds_builder import load_split
    from shine_jax.train.loop import corpus_overrides
    from tests.train_utils import small_config

    ds = load_split(workdir / "data" / "tfds", "test", config="mqa",
                    **corpus_overrides(small_config("ift_mqa")))
    return [dict(ds[i], qa=ds[i]["qa"][:1]) for i in range(n)]


def _leftovers(folder):
    """Everything in ``folder`` (recursively) that a writer left behind: temporary files and folders included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _one_error_line(capsys):
    """The one ``error:`` line on stderr (beside any ``warning:`` lines: the fixture's documents are long)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line and not line.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    """An output that fails leaves nothing behind: not its temporary files, nor the new folders made to hold it."""
    from shine_jax.fileutil import atomic_dir, atomic_files, atomic_text_file

    (tmp_path / "kept").mkdir()
    for write in (lambda: atomic_dir(tmp_path / "kept" / "a" / "b" / "adapter"),
                  lambda: atomic_text_file(tmp_path / "kept" / "a" / "log.jsonl"),
                  lambda: atomic_files(tmp_path / "kept" / "a" / "r.json", tmp_path / "kept" / "a" / "c" / "r.md")):
        with pytest.raises(OSError, match="disk full"):
            with write():
                raise OSError(28, "disk full")
        assert _leftovers(tmp_path) == ["kept"]


@pytest.mark.slow
def test_disk_full_through_a_failing_writer_leaves_nothing_half_written(base_workdir, untrained_shine, tmp_path,
                                                                         monkeypatch, capsys):
    """ENOSPC raised by the writers themselves, after part of the output is on disk (any machine: no mount needed):
    one error line naming the output, the space an adapter needs and the space free; no adapter folder, no
    results file and no temporary file is left; the previous complete output stays."""
    import errno

    from shine_jax.convert import peft
    from shine_jax.data.corpus import write_jsonl
    from shine_jax.eval import report

    data = tmp_path / "docs.jsonl"
    write_jsonl(_records(base_workdir, 2), data)
    out = tmp_path / "out"
    real_save = peft.save_file

    def save_half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft, "save_file", save_half_then_fail)
    shine = str(untrained_shine)
    internalize = ["internalize", "--workdir", shine, "--jsonl", str(data), "--out", str(out)]
    assert cli.main(internalize) == 2
    line = _one_error_line(capsys)
    assert re.search(rf"error: no space left on the device \(output {re.escape(str(out))}/\S+, needs about "
                     r"[\d.]+ MB, [\d.]+ MB free there\); .*nothing half-written was kept", line), line
    assert _leftovers(out) == []

    # eval: results.json, .md and .png are written together or not at all; an earlier complete set is kept
    evaluate = ["eval", "--workdir", shine, "--data", str(data), "--methods", "none", "--batch-size",
                "2", "--max-new-tokens", "2", "--no-progress", "--out", str(tmp_path / "res" / "r.json")]
    monkeypatch.setattr(peft, "save_file", real_save)
    assert cli.main(evaluate) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()}
    assert sorted(before) == ["r.json", "r.md", "r.png"]

    def plot_then_fail(results, path):
        pathlib.Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "plot", plot_then_fail)
    assert cli.main(evaluate) == 2
    line = _one_error_line(capsys)
    assert f"no space left on the device (output {tmp_path / 'res' / 'r.json'}" in line
    assert {p.name: p.read_bytes() for p in (tmp_path / "res").iterdir()} == before


@pytest.mark.slow
def test_disk_full_on_a_small_tmpfs(base_workdir, untrained_shine, tmp_path, capsys):
    """A real full file system (a 256 KiB tmpfs, filled): internalize and eval fail with one line each and leave
    nothing behind; once space is freed the same commands succeed. Skipped where mounting is not permitted."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()[:120]}); the failing-writer "
                    "test covers the same paths")
    try:
        from shine_jax.data.corpus import write_jsonl

        data = tmp_path / "docs.jsonl"
        write_jsonl(_records(base_workdir, 1), data)
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as f:  # unbuffered: the write that fails is the one that is lost
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        shine = str(untrained_shine)
        commands = {
            "internalize": ["internalize", "--workdir", shine, "--jsonl", str(data), "--out",
                            str(mount / "adapters")],
            "eval": ["eval", "--workdir", shine, "--data", str(data), "--methods", "none",
                     "--batch-size", "1", "--max-new-tokens", "2", "--no-progress", "--out", str(mount / "r.json")]}
        for name, argv in commands.items():
            assert cli.main(argv) == 2, name
            line = _one_error_line(capsys)
            assert "no space left on the device" in line and "0.0 MB free there" in line, line
            assert _leftovers(mount) == ["filler"], name
        filler.unlink()
        for name, argv in commands.items():
            assert cli.main(argv) == 0, (name, capsys.readouterr().err[-2000:])
        assert (mount / "adapters").is_dir() and (mount / "r.json").is_file()
    finally:
        subprocess.run(["umount", str(mount)], check=False)
