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
FAST = ["--epochs", "2", "--batch-size", "4", "--num-workers", "0", "--bootstrap", "20", "--device", "cpu"]


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
