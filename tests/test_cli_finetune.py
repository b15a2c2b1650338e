"""`dermctl finetune` through the CLI: a tiny task, random resnet10t, 32 px."""

from __future__ import annotations

import json
from pathlib import Path

from test_finetune import make_task
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.models.backbone import BackboneMeta, create_backbone, export_backbone

runner = CliRunner()
ARGS = ["finetune", "--task", "tiny", "--model", "dino-tiny"]
FAST = ["--epochs", "2", "--batch-size", "4", "--workers", "0", "--bootstrap", "20", "--device", "cpu"]


def make_run(root: Path) -> None:
    """A pretraining run's exported backbone, as `dermctl pretrain` leaves it (32 px input)."""
    meta = BackboneMeta("resnet10t", "avgpool", input_size=32, extra={"method": "dino", "run": "dino-tiny"})
    export_backbone(create_backbone("resnet10t", "random"), root / "runs" / "dino-tiny", meta)


def test_cli_finetune_json_then_conflict(tmp_path: Path) -> None:
    make_task(tmp_path)
    make_run(tmp_path)
    res = runner.invoke(app, ["-C", str(tmp_path), "--json", *ARGS, *FAST])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["task"] == "tiny" and out["model"] == "dino-tiny" and out["epochs_run"] == 2
    result = Path(out["result"])
    assert result == tmp_path / "results" / "finetune" / "dino-tiny" / "tiny.json"
    payload = json.loads(result.read_text())
    assert (
        payload["protocol"] == "finetune"
        and payload["init"] == "dino"
        and payload["config"]["image_size"] == 32
    )
    assert (tmp_path / "runs" / "finetune-dino-tiny-tiny" / "metrics.csv").is_file()

    again = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST])
    assert again.exit_code == 5
    assert "exists" in again.output and "--force" in again.output
    # --resume of a finished run re-evaluates the best checkpoint: same numbers, no new epoch
    resumed = runner.invoke(app, ["-C", str(tmp_path), "--json", *ARGS, *FAST, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["metrics"]["macro_f1"] == out["metrics"]["macro_f1"]
    assert json.loads(resumed.stdout)["epochs_run"] == 2


def test_cli_finetune_bad_option_and_unknown_task(tmp_path: Path) -> None:
    make_task(tmp_path)
    make_run(tmp_path)
    res = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST, "--early-stop", "auc"])
    assert res.exit_code == 2 and "--early-stop" in res.output
    res = runner.invoke(app, ["-C", str(tmp_path), *ARGS[:2], "nope", *ARGS[3:], *FAST])
    assert res.exit_code == 3 and "nope" in res.output


def test_cli_finetune_random_reference_model(tmp_path: Path) -> None:
    make_task(tmp_path)
    args = [
        "finetune",
        "--task",
        "tiny",
        "--model",
        "random",
        "--backbone",
        "resnet10t",
        "--image-size",
        "32",
    ]
    res = runner.invoke(app, ["-C", str(tmp_path), "--json", *args, *FAST, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["model"] == "random-resnet10t"
    assert json.loads(Path(out["result"]).read_text())["init"] == "random"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_cli_finetune_checkpoints_carry_a_hash_and_altered_ones_are_refused(tmp_path: Path) -> None:
    make_task(tmp_path)
    make_run(tmp_path)
    assert runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST]).exit_code == 0
    run = tmp_path / "runs" / "finetune-dino-tiny-tiny"
    for name in ("last.pt", "best.pt"):
        assert (run / f"{name}.sha256").is_file(), name  # the sidecar the README promises
    best = (run / "best.pt").read_bytes()
    _flip(run / "best.pt")  # was: "internal error: ValueError: Input contains NaN"
    res = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST, "--resume"])
    assert res.exit_code == 3, res.output
    assert "best.pt" in res.output and "does not match" in res.output
    (run / "best.pt").write_bytes(best)
    _flip(run / "last.pt")  # was: resumed with exit 0
    res = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST, "--resume"])
    assert res.exit_code == 3, res.output
    assert "last.pt" in res.output and "does not match" in res.output


def test_cli_finetune_refuses_an_image_replaced_after_ingest(tmp_path: Path) -> None:
    from dermctl.data.manifest import fill_hashes, read_manifest, write_manifest

    manifest = make_task(tmp_path)
    write_manifest(fill_hashes(read_manifest(manifest)), manifest)  # with sha256, as ingest writes it
    make_run(tmp_path)
    images = sorted((tmp_path / "images").glob("*.png"))
    images[0].write_bytes(images[1].read_bytes())  # another valid image
    res = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST])
    assert res.exit_code == 3, res.output
    assert images[0].name in res.output and "re-run ingest" in res.output
    assert not (tmp_path / "results" / "finetune").exists()


def test_cli_finetune_run_in_use_names_the_pid(tmp_path: Path) -> None:
    import subprocess
    import sys

    make_task(tmp_path)
    make_run(tmp_path)
    run = tmp_path / "runs" / "finetune-dino-tiny-tiny"
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / ".lock").write_text(str(holder.pid))
        res = runner.invoke(app, ["-C", str(tmp_path), *ARGS, *FAST, "--force"])
        assert res.exit_code == 5, res.output  # was: a second process training into the same folder
        assert f"in use by PID {holder.pid}" in res.output
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "results" / "finetune").exists()
