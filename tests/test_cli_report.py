"""`dermctl report` through the CLI on hand-written result files."""

from __future__ import annotations

import json
from pathlib import Path

from test_report import curve, write_result
from typer.testing import CliRunner

from dermctl.cli.app import app

runner = CliRunner()


def _workspace(root: Path) -> None:
    res = root / "results"
    write_result(res, "knn", "ibot-vit", "ham10000", 0.7, (0.65, 0.75), init="ibot", curve=curve(0.4))
    write_result(res, "linear", "ibot-vit", "ham10000", 0.72, (0.7, 0.74), init="ibot")
    write_result(res, "linear", "imagenet-resnet50", "pad-ufes-20", 0.497, (0.45, 0.55), init="imagenet")
    write_result(res, "finetune", "dino-run", "ham10000", 0.5, (0.45, 0.55), init="dino")
    (root / "runs" / "dino-run").mkdir(parents=True)
    (root / "runs" / "dino-run" / "run.json").write_text(json.dumps({"status": "diverged"}))


def test_cli_report_writes_everything_and_prints_table(tmp_path: Path) -> None:
    _workspace(tmp_path)
    res = runner.invoke(app, ["-C", str(tmp_path), "report"])
    assert res.exit_code == 0, res.output
    assert "Table 2" in res.stdout and "72.0 [70.0, 74.0]" in res.stdout and "DINO†" in res.stdout
    for name in ("table2.md", "table2.csv", "table2.tex", "figure1.png", "figure1.svg", "report.html"):
        assert (tmp_path / "reports" / name).is_file(), name


def test_cli_report_json_and_options(tmp_path: Path) -> None:
    _workspace(tmp_path)
    out = tmp_path / "elsewhere"
    res = runner.invoke(
        app,
        [
            "-C",
            str(tmp_path),
            "--json",
            "report",
            "--output",
            str(out),
            "--tasks",
            "pad-ufes-20,ham10000",
            "--format",
            "md,csv",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [c["task"] for c in data["columns"]] == ["pad-ufes-20", "ham10000"]
    linear = [r for r in data["rows"] if r["evaluation"] == "linear"]
    assert [r["label"] for r in linear] == ["ImageNet", "iBOT"]
    assert linear[0]["cells"]["ham10000"] is None
    assert linear[0]["cells"]["pad-ufes-20"]["text"] == "49.7 [45.0, 55.0]"
    assert sorted(p.name for p in out.iterdir()) == ["table2.csv", "table2.md"]
    assert data["footnotes"] and "diverged" in data["footnotes"][0]


def test_cli_report_errors(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    res = runner.invoke(app, ["-C", str(tmp_path), "report"])
    assert res.exit_code == 3 and "no result files" in res.output
    _workspace(tmp_path)
    res = runner.invoke(app, ["-C", str(tmp_path), "report", "--format", "md,docx"])
    assert res.exit_code == 2 and "--format" in res.output and "docx" in res.output
    write_result(tmp_path / "results", "finetune", "ibot-vit", "ham10000", 0.8, init="ibot", split="f" * 64)
    res = runner.invoke(app, ["-C", str(tmp_path), "report"])
    assert res.exit_code == 3 and "different test splits" in res.output
    assert not (tmp_path / "reports").exists()


def test_cli_report_refuses_unknown_tasks_and_keeps_the_report(tmp_path: Path) -> None:
    _workspace(tmp_path)
    assert runner.invoke(app, ["-C", str(tmp_path), "report", "--format", "md,csv"]).exit_code == 0
    reports = tmp_path / "reports"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reports.iterdir()}
    res = runner.invoke(app, ["-C", str(tmp_path), "report", "--tasks", "ham10000,pad-ufes20x"])
    assert res.exit_code == 3, res.output  # was: exit 0 and an empty table over the good one
    assert "pad-ufes20x" in res.output and "ham10000, pad-ufes-20" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reports.iterdir()} == before


def test_cli_report_files_are_readable_by_the_group_under_umask_022(tmp_path: Path) -> None:
    import os
    import stat

    _workspace(tmp_path)
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, ["-C", str(tmp_path), "report", "--format", "md,html"]).exit_code == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "reports").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p  # was: 0600 whatever the umask
