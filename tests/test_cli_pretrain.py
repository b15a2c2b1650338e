"""`dermctl pretrain` through the CLI: errors and exit codes, --print-config, a tiny run with --json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import helpers_methods  # noqa: F401  (registers the tiny test method)
import pytest
from helpers_methods import make_corpus, make_images, make_task
from typer.testing import CliRunner

from dermctl.cli.app import app

runner = CliRunner()


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    (root / "manifests").mkdir(parents=True)
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 10))
    return root, man


def _run(root, *args):
    return runner.invoke(app, ["-C", str(root), "pretrain", *args])


def test_unknown_method_and_backbone_and_bad_values(ws):
    root, man = ws
    r = _run(root, "--method", "nosuch", "--data", str(man))
    assert r.exit_code == 2 and "--method" in r.output and "nosuch" in r.output
    r = _run(root, "--method", "tinytest", "--data", str(man), "--backbone", "resnet_9000", "--device", "cpu")
    assert r.exit_code == 2 and "--backbone" in r.output
    r = _run(root, "--method", "tinytest", "--data", str(man), "--epochs", "0")
    assert r.exit_code == 2 and "'epochs'" in r.output
    r = _run(root, "--method", "tinytest", "--data", str(man), "--set", "nope=1")
    assert r.exit_code == 2 and "'nope'" in r.output
    r = _run(root, "--method", "tinytest")
    assert r.exit_code == 2 and "--data" in r.output
    r = _run(root, "--method", "tinytest", "--data", str(root / "missing.csv"), "--device", "cpu")
    assert r.exit_code == 3 and "missing.csv" in r.output


def test_print_config_toml_and_json(ws, tmp_path):
    root, _ = ws
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[pretrain]\nlr = 0.2\nepochs = 9\n", encoding="utf-8")
    r = _run(root, "--method", "tinytest", "--config", str(cfg_file), "--set", "epochs=4", "--print-config")
    assert r.exit_code == 0, r.output
    parsed = tomllib.loads(r.stdout)
    assert parsed["lr"] == 0.2 and parsed["epochs"] == 4 and parsed["method"] == "tinytest"
    r = runner.invoke(
        app, ["-C", str(root), "--json", "pretrain", "--method", "tinytest", "--print-config", "--lr", "0.3"]
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["lr"] == 0.3


def test_task_manifest_in_data_needs_opt_in(ws, tmp_path):
    root, _ = ws
    task = make_task(tmp_path / "task.csv", make_images(tmp_path / "t", 6, prefix="t"))
    r = _run(root, "--method", "tinytest", "--data", str(task), "--device", "cpu")
    assert r.exit_code == 2 and "--allow-task-images" in r.output


def test_tiny_run_json_conflict_and_nan(ws):
    root, man = ws
    args = [
        "--method",
        "tinytest",
        "--data",
        str(man),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--batch-size",
        "3",
    ]
    r = runner.invoke(app, ["-C", str(root), "--json", "pretrain", *args])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "finished" and out["epochs_run"] == 2 and out["name"] == "tinytest-resnet10t"
    assert (root / "runs" / "tinytest-resnet10t" / "backbone.safetensors").is_file()
    r = _run(root, *args)
    assert r.exit_code == 5 and "--resume" in r.output
    r = _run(root, *args, "--name", "nan", "--set", "nan_at_it=1")
    assert r.exit_code == 4 and "nan" in r.output and "last.pt" in r.output


def test_sigterm_checkpoints_and_exits_130(ws):
    root, man = ws
    script = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import helpers_methods; from dermctl.cli.app import app; app()"
    cmd = [
        sys.executable,
        "-c",
        script,
        "-C",
        str(root),
        "pretrain",
        "--method",
        "tinytest",
        "--data",
        str(man),
    ]
    cmd += ["--epochs", "500", "--patience", "0", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last = root / "runs" / "tinytest-resnet10t" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 90
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "--resume" in err and "SIGTERM" in err
    run = json.loads((root / "runs" / "tinytest-resnet10t" / "run.json").read_text())
    assert run["status"] == "interrupted"


def test_offline_imagenet_default_says_how_to_go_on(ws, monkeypatch):
    """SimCLR starts from ImageNet weights by default (the study's code); offline without them, one line
    naming --init random and --init PATH, exit 6 (unavailable), and no run folder."""
    root, man = ws
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(root / "empty-hf-cache"))  # never a cached copy
    r = _run(root, "--method", "simclr", "--data", str(man), "--backbone", "resnet10t", "--device", "cpu")
    assert r.exit_code == 6, r.output
    text = " ".join(r.output.split())
    assert "--init imagenet" in text and "--init random" in text and "--init PATH" in text
    assert r.output.count("error:") == 1 and "Traceback" not in r.output
    assert not (root / "runs").exists() or not any((root / "runs").iterdir())


# -- issue 12: recovery, the run lock, a full disk ------------------------------------------------------

TINY = ["--method", "tinytest", "--epochs", "2", "--device", "cpu", "--batch-size", "3", "--workers", "0"]


def _enospc_on(monkeypatch, predicate):
    """fsync of a temp file whose base name satisfies `predicate` fails as on a full disk."""
    import errno

    real = os.fsync

    def fsync(fd):
        if predicate(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_run_killed_before_its_first_checkpoint_can_be_restarted(ws):
    root, man = ws
    run = root / "runs" / "tinytest-resnet10t"
    run.mkdir(parents=True)  # what SIGKILL in the first epoch leaves: config and status, no checkpoint
    (run / "config.json").write_text(json.dumps({"config": {}}))
    (run / "run.json").write_text(json.dumps({"status": "running"}))
    r = _run(root, *TINY, "--data", str(man))
    assert r.exit_code == 5 and "--resume" in r.output and "--force" in r.output
    r = _run(root, *TINY, "--data", str(man), "--resume")  # was: exit 3 "no checkpoint to continue"
    assert r.exit_code == 0, r.output
    assert "starting the run afresh" in r.output
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


def test_force_replaces_a_run_and_is_refused_with_resume(ws):
    root, man = ws
    assert _run(root, *TINY, "--data", str(man)).exit_code == 0
    run = root / "runs" / "tinytest-resnet10t"
    (run / "stale.txt").write_text("from the old run")
    r = _run(root, *TINY, "--data", str(man), "--force")  # was: "No such option: --force"
    assert r.exit_code == 0, r.output
    assert not (run / "stale.txt").exists() and (run / "backbone.safetensors").is_file()
    r = _run(root, *TINY, "--data", str(man), "--force", "--resume")
    assert r.exit_code == 2 and "--force" in r.output


def test_lock_is_taken_before_the_data_is_read_and_names_the_pid(ws):
    root, _ = ws
    run = root / "runs" / "tinytest-resnet10t"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        # A missing --data file would be exit 3 if the data were read first.
        r = _run(root, *TINY, "--data", str(root / "missing.csv"))
        assert r.exit_code == 5, r.output
        assert f"in use by PID {holder.pid}" in r.output  # was: "pass --resume" / the data error
        r = _run(root, *TINY, "--data", str(root / "missing.csv"), "--resume")
        assert r.exit_code == 5 and f"PID {holder.pid}" in r.output
    finally:
        holder.kill()
        holder.wait()


def test_refused_run_leaves_no_empty_run_folder(ws):
    root, _ = ws
    r = _run(root, *TINY, "--data", str(root / "missing.csv"))
    assert r.exit_code == 3
    assert not (root / "runs" / "tinytest-resnet10t").exists()  # else the next run would say "exists"


@pytest.mark.parametrize("target", ["last.pt", "metrics.csv"])
def test_full_disk_is_one_line_with_its_exit_code_and_no_running_status(ws, monkeypatch, target):
    root, man = ws
    _enospc_on(monkeypatch, lambda name: name.startswith(f".{target}.") and ".sha256" not in name)
    r = _run(root, *TINY, "--data", str(man))
    assert r.exit_code == 7, r.output  # was: 1, "internal error: RuntimeError: . unexpected pos ..."
    lines = [line for line in r.output.splitlines() if line.strip()]
    (err,) = [line for line in lines if line.startswith("error:")]
    assert target in err and "no space left" in err and "internal error" not in r.output
    run = root / "runs" / "tinytest-resnet10t"
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted" and "no space left" in status["message"]  # not "running"
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # no torn or temporary file
    monkeypatch.undo()
    r = _run(root, *TINY, "--data", str(man), "--resume")  # once space is back, the run goes on
    assert r.exit_code == 0, r.output
