"""`dermctl demo` end to end at reduced size: every step runs through the same core functions as the commands."""

from __future__ import annotations

import inspect
import json

import pytest
from typer.testing import CliRunner

from dermctl.cli import demo as demo_cli
from dermctl.cli.app import app
from dermctl.data.manifest import read_manifest
from dermctl.demo import DemoConfig, run_demo, verdict_text
from dermctl.errors import ConflictError
from dermctl.workspace import Workspace


@pytest.mark.slow
def test_demo_runs_end_to_end_and_refuses_to_clobber(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # ImageNet weights cannot be had: the row must say so, not be faked
    ws = Workspace.at(tmp_path)
    cfg = DemoConfig(
        n_per_class=14, corpus_size=40, pretrain_epochs=1, finetune_epochs=1, repeats=2, bootstrap=20
    )
    summary = run_demo(ws, cfg)
    assert summary.report is not None and summary.report.is_file()
    assert "ImageNet" in summary.report.read_text() or "imagenet" in json.dumps(summary.unavailable)
    assert list(summary.unavailable) == ["imagenet-resnet18"]
    for protocol, model in [
        ("knn", "demo-simclr"),
        ("linear", "demo-simclr"),
        ("finetune", "demo-simclr"),
        ("knn", "random-resnet18"),
        ("knn-paper", "demo-simclr"),
        ("stratified", "stratified"),
    ]:
        result = json.loads((ws.results / protocol / model / "demo-task.json").read_text())
        assert 0.0 <= result["metrics"]["macro_f1"] <= 1.0
    assert not (ws.results / "knn" / "imagenet-resnet18").exists()
    # the skin type of the generated data reaches the results, so the report's breakdown appears
    knn = json.loads((ws.results / "knn" / "demo-simclr" / "demo-task.json").read_text())
    assert set(knn["per_skin_type"]) <= {"1", "2", "3", "4", "5", "6"} and len(knn["per_skin_type"]) >= 3
    page = summary.report.read_text()
    assert "as published (optimistic)" in page and "ImageNet (unavailable)" in page
    table = (ws.reports / "table2.md").read_text()
    assert "stratified random" in table and "SimCLR" in table
    # the verdict: every number it names is the one in the result files, and --json carries it
    figures = summary.to_json()["figures"]
    assert figures["knn"]["pretrained"]["all"]["macro_f1"] == round(100 * knn["metrics"]["macro_f1"], 1)
    assert figures["knn"]["imagenet"] == {"unavailable": summary.unavailable["imagenet-resnet18"]}
    manifest = read_manifest(ws.manifests / "demo-task.csv")
    assert figures["test_images"] == sum(manifest.counts()["test"].values())
    assert summary.verdict == verdict_text(figures) and "ImageNet init: unavailable" in summary.verdict
    # the run exported a backbone and was not flagged
    run = json.loads((ws.runs / "demo-simclr" / "run.json").read_text())
    assert run["status"] in ("finished", "early_stopped")
    with pytest.raises(ConflictError, match="already holds demo output"):
        run_demo(ws, cfg)


def test_demo_rejects_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["--workdir", str(tmp_path), "demo", "--method", "colorme"])
    assert result.exit_code == 2
    assert "--method" in result.output


def _figures(pre_all, rnd_all, pre_10, rnd_10):
    def p(v, lo, hi):
        return {"macro_f1": v, "ci95": [lo, hi]}

    return {
        "method": "simclr",
        "test_images": 300,
        "knn": {
            "pretrained": {"all": p(*pre_all), "10": p(*pre_10)},
            "random": {"all": p(*rnd_all), "10": p(*rnd_10)},
            "imagenet": {"unavailable": "offline"},
        },
        "knn_margin_points": {
            "all": round(pre_all[0] - rnd_all[0], 1),
            "10": round(pre_10[0] - rnd_10[0], 1),
        },
        "stratified": p(25.0, 20.0, 30.0),
        "linear_probe": {"pretrained": p(80.0, 75.0, 85.0), "random": p(40.0, 35.0, 45.0)},
        "finetuned": {"pretrained": p(85.0, 80.0, 90.0), "random": p(60.0, 55.0, 65.0)},
    }


def test_verdict_claims_only_what_the_intervals_say():
    clear = verdict_text(
        _figures((80.0, 76.0, 84.0), (40.0, 35.0, 45.0), (70.0, 68.0, 72.0), (35.0, 33.0, 37.0))
    )
    assert "80.0 [76.0, 84.0]" in clear and "40.0 [35.0, 45.0]" in clear and "+40.0 points" in clear
    assert "10 labelled images per class" in clear and "+35.0 points" in clear
    assert clear.count("ahead, the intervals do not overlap") == 2
    assert "ImageNet init: unavailable (offline)" in clear and "25.0 [20.0, 30.0]" in clear
    assert "\n" not in clear  # one paragraph
    unclear = verdict_text(
        _figures((42.0, 36.0, 48.0), (40.0, 35.0, 45.0), (30.0, 20.0, 40.0), (35.0, 33.0, 37.0))
    )
    assert "ahead" not in unclear and unclear.count("no clear difference") == 2


def test_cli_defaults_are_the_demo_config_defaults():
    # the command keeps literal defaults (importing dermctl.demo would load torch for --help): keep in step
    params = inspect.signature(demo_cli.command).parameters
    d = DemoConfig()
    assert params["method"].default == d.method
    assert params["epochs"].default == d.pretrain_epochs
    assert params["per_class"].default == d.n_per_class
    assert params["corpus_size"].default == d.corpus_size
