"""`dermctl demo` end to end at reduced size: every step runs through the same core functions as the commands."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.demo import DemoConfig, run_demo
from dermctl.errors import ConflictError
from dermctl.workspace import Workspace


@pytest.mark.slow
def test_demo_runs_end_to_end_and_refuses_to_clobber(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # ImageNet weights cannot be had: the row must say so, not be faked
    ws = Workspace.at(tmp_path)
    cfg = DemoConfig(
        n_per_class=12, corpus_size=40, pretrain_epochs=2, finetune_epochs=1, repeats=2, bootstrap=20
    )
    summary = run_demo(ws, cfg)
    assert summary.report is not None and summary.report.is_file()
    assert "ImageNet" in summary.report.read_text() or "imagenet" in json.dumps(summary.unavailable)
    assert list(summary.unavailable) == ["imagenet-vit_tiny_patch16_224"]
    for protocol, model in [
        ("knn", "demo-dino"),
        ("linear", "demo-dino"),
        ("finetune", "demo-dino"),
        ("knn", "random-vit_tiny_patch16_224"),
        ("stratified", "stratified"),
    ]:
        result = json.loads((ws.results / protocol / model / "demo-task.json").read_text())
        assert 0.0 <= result["metrics"]["macro_f1"] <= 1.0
    assert not (ws.results / "knn" / "imagenet-vit_tiny_patch16_224").exists()
    table = (ws.reports / "table2.md").read_text()
    assert "stratified random" in table and "DINO" in table
    # the run exported a backbone and was not flagged
    run = json.loads((ws.runs / "demo-dino" / "run.json").read_text())
    assert run["status"] in ("finished", "early_stopped")
    with pytest.raises(ConflictError, match="already holds demo output"):
        run_demo(ws, cfg)


def test_demo_rejects_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path), "demo", "--method", "colorme"])
    assert result.exit_code == 2
    assert "--method" in result.output
