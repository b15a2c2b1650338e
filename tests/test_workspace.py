from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dermctl.errors import EXIT_DISK_FULL, ConflictError, DataError, DiskFullError
from dermctl.workspace import (
    Workspace,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    is_disk_full,
    read_json,
    run_lock,
)


def test_layout_paths(tmp_path):
    ws = Workspace.at(tmp_path)
    assert ws.manifests == tmp_path / "manifests"
    assert ws.embedding_path("dino-x", "ham10000") == tmp_path / "embeddings" / "dino-x" / "ham10000.h5"
    assert ws.result_path("knn", "m", "t") == tmp_path / "results" / "knn" / "m" / "t.json"
    assert not ws.manifests.exists()  # creating the object touches nothing
    ws.ensure()
    for name in ("manifests", "runs", "embeddings", "results", "reports", "cache"):
        assert (tmp_path / name).is_dir()


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("torn")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_refuses_overwrite_when_asked(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(ConflictError, match="r.json"):
        atomic_write_json(target, {"v": 2}, overwrite=False)
    assert json.loads(target.read_text()) == {"v": 1}


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_json(bad)


# -- issue 12: sharing (umask), full disk, task keys, run lock ------------------------------------------


def _enospc_on(monkeypatch: pytest.MonkeyPatch, predicate: Callable[[str], bool]) -> None:
    """Make fsync of files whose base name satisfies `predicate` fail as on a full disk."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if predicate(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert current_umask() == mask and os.umask(mask) == mask  # read without changing it
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")  # written by a library into the temp path
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name


def test_full_disk_is_one_line_naming_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    _enospc_on(monkeypatch, lambda name: name.startswith(".results.json."))
    with pytest.raises(DiskFullError) as err:
        atomic_write_text(target, "new")
    assert err.value.exit_code == EXIT_DISK_FULL == 7
    assert str(target) in err.value.message and "no space left" in err.value.message
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_disk_full_is_recognised_through_torch_and_hdf5_wrappers() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as exc:
        assert is_disk_full(exc)
    assert is_disk_full(OSError("Can't write data (file write failed: errno = 28, error message = ...)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(DiskFullError("x: no space left"))


def test_task_keys_keep_same_named_tasks_apart(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "ws")
    assert ws.task_key(ws.manifests / "ham10000.csv") == "ham10000"
    a, b = ws.task_key(tmp_path / "a" / "tiny.csv"), ws.task_key(tmp_path / "b" / "tiny.csv")
    assert a != b and a.startswith("tiny-") and b.startswith("tiny-")
    assert ws.task_key(tmp_path / "a" / "tiny.csv") == a  # stable


def test_run_lock_names_the_pid_holding_it_and_takes_over_a_dead_ones(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        run.mkdir(parents=True)
        (run / ".lock").write_text(str(holder.pid))
        with pytest.raises(ConflictError) as err, run_lock(run, "dermctl pretrain"):
            pass
        assert f"in use by PID {holder.pid}" in err.value.message
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run) as existed:  # the holder is gone: taken over
        assert existed and (run / ".lock").read_text() == str(os.getpid())
    assert not (run / ".lock").exists()
    fresh = tmp_path / "runs" / "new"
    with run_lock(fresh) as existed:
        assert not existed and fresh.is_dir()
    assert not fresh.exists()  # refused before writing anything: no empty run folder left behind


def test_run_folder_names_every_file_of_a_run(tmp_path):
    from dermctl.workspace import (
        DONE_STATUSES,
        FAILED_STATUSES,
        INCOMPLETE_STATUSES,
        RUN_STATUSES,
        RunFolder,
        write_rows_csv,
    )

    pre = RunFolder.pretraining(tmp_path / "simclr-resnet50")
    assert (pre.config.name, pre.metrics.name, pre.status.name) == ("config.json", "metrics.csv", "run.json")
    assert pre.last == tmp_path / "simclr-resnet50" / "checkpoints" / "last.pt"
    assert pre.best.parent == pre.last.parent
    ft = RunFolder.finetuning(tmp_path / "finetune-m-task")
    assert ft.last == tmp_path / "finetune-m-task" / "last.pt"  # the layout resumable 0.1.0 runs have
    assert set(DONE_STATUSES) | set(FAILED_STATUSES) | set(INCOMPLETE_STATUSES) <= set(RUN_STATUSES)
    assert not set(DONE_STATUSES) & set(INCOMPLETE_STATUSES)
    with pre.lock("test") as existed:
        assert not existed and (pre.root / ".lock").is_file()
        write_rows_csv(pre.metrics, ["epoch", "loss"], [["1", "0.5"], ["2", ""]])
    assert pre.metrics.read_text() == "epoch,loss\n1,0.5\n2,\n"
    assert not (pre.root / ".lock").exists()
