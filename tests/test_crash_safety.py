"""SIGKILL at seeded random moments of real `python -m dermctl` processes: every file left behind is
complete (the old one or the new one, never torn), and re-running the command finishes the work with the
same result as an uninterrupted run (ingest, pretrain --resume, embed, finetune --resume, knn).

Kill points per test: KILLS (2) per command, 10 in all; each delay is drawn from a seeded RNG, measured
from the moment the command's output (or its temporary file) appears, so the kill lands while it writes.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import helpers_methods  # noqa: F401  (registers the tiny test method `tinytest`)
import numpy as np
import pytest
from helpers_methods import make_corpus, make_images
from test_cli_eval import make_task
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.data.demo import generate_demo
from dermctl.data.manifest import read_manifest
from dermctl.eval.embeddings import read_attrs
from dermctl.models.backbone import BackboneMeta, create_backbone, export_backbone
from dermctl.runtime.checkpoint import load_checkpoint
from dermctl.workspace import read_json, remove_stale_temps

KILLS = 2
TESTS_DIR = Path(__file__).parent
# The same entry point as `python -m dermctl`, with the test-only method registered first.
SCRIPT = (
    f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import helpers_methods; "
    "from dermctl.cli.app import main; sys.argv[0] = 'dermctl'; main()"
)
EMBED = ["embed", "--model", "random", "--backbone", "resnet10t", "--image-size", "32", "--device", "cpu"]
EMBED += ["--workers", "0", "--batch-size", "1"]
FT_FAST = ["--batch-size", "4", "--workers", "0", "--bootstrap", "20", "--device", "cpu"]
FT = ["finetune", "--task", "toy", "--model", "dino-tiny", "--epochs", "12", "--patience", "20", *FT_FAST]
KNN = ["knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3", "--seed", "3"]


def cli(root: Path, *args: str):
    r = CliRunner().invoke(app, ["-C", str(root), *args])
    assert r.exit_code == 0, r.output
    return r


def spawn(root: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DERMCTL_NO_DOWNLOAD="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "-C", str(root), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def kill_after(proc: subprocess.Popen[str], started: Callable[[], bool], delay: float) -> bool:
    """SIGKILL `proc` `delay` s after `started()` turns true; False when it finished first."""
    deadline = time.monotonic() + 120
    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return True


def temps(folder: Path) -> list[Path]:
    return list(folder.rglob(".*.tmp")) if folder.exists() else []


def csv_rows(path: Path, drop: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def strip_volatile(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "provenance"}


def make_exported_run(root: Path) -> None:
    meta = BackboneMeta("resnet10t", "avgpool", input_size=32, extra={"method": "dino", "run": "dino-tiny"})
    export_backbone(create_backbone("resnet10t", "random"), root / "runs" / "dino-tiny", meta)


# ------------------------------------------------------------------------------------------ ingest


def test_ingest_killed_then_rerun_gives_byte_identical_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_demo(data, n_per_class=40, size=48)
    args = ["ingest", "--dataset", "csv", "--root", str(data / "metadata.csv"), "--name", "demo"]
    args += ["--label-column", "label", "--group-column", "patient_id", "--workers", "1"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    cli(clean, *args)
    rng = random.Random(11)
    landed = 0
    for _ in range(KILLS):
        proc = spawn(crashed, *args, "--force")
        # from the start of the process: a fast machine can finish a small ingest in a few seconds
        landed += kill_after(proc, lambda: True, rng.uniform(0.3, 2.5))
        # whatever is there is complete: every manifest parses, every JSON loads
        for m in (crashed / "manifests").glob("*.csv"):
            read_manifest(m)
        for j in (crashed / "manifests").glob("*.json"):
            read_json(j)
    cli(crashed, *args, "--force")
    got = (crashed / "manifests" / "demo.csv").read_bytes()
    assert got == (clean / "manifests" / "demo.csv").read_bytes()
    assert landed >= 1, "no kill landed while ingest ran"


# ------------------------------------------------------------------------------------------ pretrain


def test_pretrain_killed_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 12))
    args = ["pretrain", "--method", "tinytest", "--data", str(man), "--epochs", "20", "--patience", "0"]
    args += ["--device", "cpu", "--batch-size", "3"]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    cli(clean, *args)
    run = "tinytest-resnet10t"
    last = crashed / "runs" / run / "checkpoints" / "last.pt"
    rng = random.Random(5)
    landed = 0
    for i in range(KILLS):
        proc = spawn(crashed, *args, *(["--resume"] if i else []))
        landed += kill_after(proc, last.exists, rng.uniform(0.0, 0.4))
        state = load_checkpoint(last)  # complete and matching its hash sidecar
        assert isinstance(state, dict)
    cli(crashed, *args, "--resume")
    assert landed >= 1
    drop = ("seconds", "images_per_s", "data_wait_share")
    want = csv_rows(clean / "runs" / run / "metrics.csv", drop)
    got = csv_rows(crashed / "runs" / run / "metrics.csv", drop)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for a, b in zip(got, want, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-7), (key, a, b)
    assert not (crashed / "runs" / run / ".lock").exists()


# ------------------------------------------------------------------------------------------ embed


@pytest.fixture(scope="module")
def task_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the toy task, its random-resnet10t embeddings and a kNN result (uninterrupted)."""
    root = tmp_path_factory.mktemp("clean")
    make_task(root)
    cli(root, *EMBED)
    cli(root, *KNN)
    return root


def h5_features(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["complete"])
        return np.asarray(f["features"])


def test_embed_killed_leaves_old_or_new_complete_file_and_rerun_matches(
    task_ws: Path, tmp_path: Path
) -> None:
    crashed = tmp_path / "crashed"
    shutil.copytree(task_ws, crashed)
    target = crashed / "embeddings" / "random-resnet10t" / "toy.h5"
    want = h5_features(task_ws / "embeddings" / "random-resnet10t" / "toy.h5")
    rng = random.Random(7)
    for i in range(KILLS):
        if i == 1:
            target.unlink()  # second round: no old file at all
        proc = spawn(crashed, *EMBED, "--force")
        kill_after(proc, lambda: bool(temps(target.parent)), rng.uniform(0.0, 0.3))
        if target.exists():
            assert read_attrs(target)["complete"] is True or read_attrs(target)["complete"]
            np.testing.assert_array_equal(h5_features(target), want)
    cli(crashed, *EMBED)
    np.testing.assert_array_equal(h5_features(target), want)
    # leftover temps of the killed writers never count as embeddings, and go once they are stale
    for tmp in temps(target.parent):
        os.utime(tmp, (0, 0))
    remove_stale_temps(target)
    assert temps(target.parent) == []


# ------------------------------------------------------------------------------------------ knn


def test_knn_killed_then_rerun_gives_same_result(task_ws: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    shutil.copytree(task_ws, crashed)
    result = crashed / "results" / "knn" / "random-resnet10t" / "toy.json"
    want = strip_volatile(read_json(task_ws / "results" / "knn" / "random-resnet10t" / "toy.json"))
    rng = random.Random(3)
    for i in range(KILLS):
        if i == 0:
            result.unlink()
        proc = spawn(crashed, *KNN, "--force")
        kill_after(proc, lambda: True, rng.uniform(3.0, 8.0))
        if result.exists():
            assert strip_volatile(read_json(result)) == want
    cli(crashed, *KNN, "--force")
    assert strip_volatile(read_json(result)) == want


# ------------------------------------------------------------------------------------------ finetune


def test_finetune_killed_then_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    make_task(clean)
    make_exported_run(clean)
    shutil.copytree(clean, crashed)
    # the manifest lists absolute image paths: point both workspaces at the same images
    cli(clean, "--json", *FT)
    run_dir = crashed / "runs" / "finetune-dino-tiny-toy"
    rng = random.Random(2)
    landed = 0
    for i in range(KILLS):
        proc = spawn(crashed, *FT, *(["--resume"] if i else []))
        landed += kill_after(proc, (run_dir / "last.pt").exists, rng.uniform(0.0, 0.3))
        for ckpt in run_dir.glob("*.pt"):
            import torch

            assert isinstance(torch.load(ckpt, map_location="cpu", weights_only=True), dict)
    cli(crashed, *FT, "--resume")
    assert landed >= 1
    name = ("results", "finetune", "dino-tiny", "toy.json")
    want = strip_volatile(read_json(clean.joinpath(*name)))
    got = strip_volatile(read_json(crashed.joinpath(*name)))
    assert got["metrics"] == want["metrics"]
    drop = ("seconds",)
    assert csv_rows(run_dir / "metrics.csv", drop) == csv_rows(
        clean / "runs" / "finetune-dino-tiny-toy" / "metrics.csv", drop
    )


# ------------------------------------------------------------------------------------------ in-process


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even `except Exception` handlers)."""


def test_checkpoint_and_sidecar_verify_at_every_rename(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint and its hash sidecar are two files: a kill between any two renames must still
    leave a pair that verifies (the old checkpoint or the new one), never a 'hash mismatch'."""
    import torch

    from dermctl.runtime.checkpoint import save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, path)
    real_replace = os.replace
    n_renames = 0
    while True:
        calls = 0

        def replace(src, dst, _stop=n_renames):
            nonlocal calls
            if calls == _stop:
                raise _Killed
            calls += 1
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        finished = True
        try:
            save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
        except _Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real_replace)
        state = load_checkpoint(path)
        assert state["epoch"] in (0, 1)
        if finished:
            break
        save_checkpoint({"epoch": 0, "w": torch.zeros(3)}, path)  # back to the old pair
        n_renames += 1
    assert n_renames >= 2  # the checkpoint itself plus at least one sidecar write were interrupted


def test_stale_temps_removed_only_when_writer_is_dead_and_idle(tmp_path: Path) -> None:
    from dermctl.workspace import atomic_write_text

    target = tmp_path / "out.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.json.{dead.pid}.abc123.tmp"
    fresh_dead = tmp_path / f".out.json.{dead.pid}.def456.tmp"
    live = tmp_path / f".out.json.{os.getpid()}.ghi789.tmp"
    other = tmp_path / ".other.json.1.jkl.tmp"
    for f in (stale, fresh_dead, live, other):
        f.write_text("torn")
    for f in (stale, live, other):
        os.utime(f, (0, 0))
    atomic_write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert not stale.exists()  # dead writer, untouched for long: removed
    assert fresh_dead.exists()  # dead pid but recently written (maybe another host's writer): kept
    assert live.exists()  # a live writer's temp: kept
    assert other.exists()  # another file's temp: not ours to judge


# ------------------------------------------------------------------------------------------ full disk


def test_ingest_on_a_full_disk_names_the_file_and_leaves_nothing_torn(tmp_path: Path, monkeypatch) -> None:
    import errno

    data = tmp_path / "data"
    generate_demo(data, n_per_class=20, size=32)
    args = ["ingest", "--dataset", "csv", "--root", str(data / "metadata.csv"), "--name", "demo"]
    args += ["--label-column", "label", "--group-column", "patient_id", "--workers", "1"]
    real = os.fsync

    def fsync(fd: int) -> None:  # the manifest's write meets a full disk
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".demo.csv."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ws = tmp_path / "ws"
    res = CliRunner().invoke(app, ["-C", str(ws), *args])
    assert res.exit_code == 7, res.output  # was: 1, "internal error: OSError [Errno 28]" without the path
    assert str(ws / "manifests" / "demo.csv") in res.output and "no space left" in res.output
    assert not (ws / "manifests" / "demo.csv").exists()
    assert not [p for p in (ws / "manifests").iterdir() if p.name.endswith(".tmp")]
