"""`dermctl ingest` through the Typer app: output, JSON, one-line errors and exit codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.data.demo import generate_demo

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "demo"
    generate_demo(root, n_per_class=6, size=40, seed=1)
    return root


def _run(workdir: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["-C", str(workdir), *args])


def _error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    return lines[0]


def test_ingest_json(demo: Path, tmp_path: Path) -> None:
    args = [
        "ingest",
        "--dataset",
        "csv",
        "--root",
        str(demo),
        "--label-column",
        "label",
        "--group-column",
        "patient_id",
    ]
    result = _run(tmp_path, "--json", *args, "--workers", "2")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "written" and data["rows"] == 24 and data["role"] == "task"
    assert Path(data["manifest"]) == (tmp_path / "manifests" / "demo.csv").resolve()
    assert sum(sum(v.values()) for v in data["counts"].values()) == 24
    again = _run(tmp_path, "--json", *args)
    assert json.loads(again.stdout)["status"] == "unchanged"
    conflict = _run(tmp_path, *args, "--seed", "3")
    assert conflict.exit_code == 5 and "--force" in _error_line(conflict)
    forced = _run(tmp_path, *args, "--seed", "3", "--force")
    assert forced.exit_code == 0 and "overwritten" in forced.stdout


def test_ingest_table_output(demo: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, "ingest", "--dataset", "folder", "--root", str(demo / "images"), "--name", "f")
    assert result.exit_code == 0, result.output
    for word in ("keratosis", "melanoma", "train", "val", "test", "class sub-folders"):
        assert word in result.stdout


def test_missing_root(tmp_path: Path) -> None:
    result = _run(tmp_path, "ingest", "--dataset", "folder", "--root", str(tmp_path / "nope"))
    assert result.exit_code == 3
    line = _error_line(result)
    assert "--root" in line and "nope" in line


def test_unknown_label_column(demo: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, "ingest", "--dataset", "csv", "--root", str(demo), "--label-column", "dx")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "--label-column" in line and "'dx'" in line and "patient_id" in line


def test_empty_data_set(tmp_path: Path) -> None:
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "broken.jpg").write_bytes(b"")
    result = _run(tmp_path, "ingest", "--dataset", "folder", "--root", str(tmp_path / "data"))
    assert result.exit_code == 3
    assert "no usable images" in _error_line(result)
    assert not (tmp_path / "manifests" / "data.csv").exists()


def test_strict_and_bad_options(demo: Path, tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    (tmp_path / "d" / "x" / "zero.png").write_bytes(b"")
    for img in sorted((demo / "images" / "nevus").glob("*.jpg"))[:3]:
        (tmp_path / "d" / "x" / img.name).write_bytes(img.read_bytes())
    strict = _run(tmp_path, "ingest", "--dataset", "folder", "--root", str(tmp_path / "d"), "--strict")
    assert strict.exit_code == 3 and "zero.png" in _error_line(strict)
    bad = _run(tmp_path, "ingest", "--dataset", "fitzpatrick17k", "--root", str(demo), "--granularity", "ten")
    assert bad.exit_code == 2 and "--granularity" in _error_line(bad)
    unknown = _run(tmp_path, "ingest", "--dataset", "nosuch", "--root", str(demo))
    assert unknown.exit_code == 2 and "--dataset" in _error_line(unknown)


def test_help_documents_every_option() -> None:
    result = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    assert result.exit_code == 0
    for option in (
        "--dataset", "--root", "--name", "--output", "--label-column", "--group-column", "--granularity",
        "--role", "--unlabelled", "--exclude", "--strict", "--seed", "--test-fraction", "--val-fraction",
        "--min-size", "--near-dup-distance", "--workers", "--force",
    ):  # fmt: skip
        assert option in result.stdout, option


def _retabled(demo: Path, folder: Path, header: dict[str, str], drop: tuple[str, ...] = ()) -> Path:
    """The demo table with columns renamed (`header`) or dropped, paths made absolute, in `folder`."""
    rows = list(csv.DictReader((demo / "metadata.csv").read_text().splitlines()))
    columns = [header.get(c, c) for c in rows[0] if c not in drop]
    lines = [",".join(columns)]
    for row in rows:
        row["path"] = str(demo / row["path"])
        lines.append(",".join(v for c, v in row.items() if c not in drop))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table.csv").write_text("\n".join(lines) + "\n")
    return folder / "table.csv"


def test_csv_label_column_in_another_case_is_a_task(demo: Path, tmp_path: Path) -> None:
    table = _retabled(demo, tmp_path / "t", {"label": "Label", "patient_id": "Patient_ID"})
    no_split = ["--val-fraction", "0", "--test-fraction", "0"]  # what is tested: the columns found
    result = _run(tmp_path, "--json", "ingest", "--dataset", "csv", "--root", str(table), *no_split)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["role"] == "task" and data["rows"] == 24
    assert "label column 'Label'" in data["variant"] and "group column 'Patient_ID'" in data["variant"]


def test_csv_without_labels_needs_unlabelled(demo: Path, tmp_path: Path) -> None:
    table = _retabled(demo, tmp_path / "t", {}, drop=("label",))
    result = _run(tmp_path, "ingest", "--dataset", "csv", "--root", str(table))
    assert result.exit_code == 3
    line = _error_line(result)
    assert str(table) in line and "no label column" in line and "image_id, patient_id, path" in line
    assert "--unlabelled" in line
    assert not (tmp_path / "manifests" / "t.csv").exists()
    result = _run(tmp_path, "--json", "ingest", "--dataset", "csv", "--root", str(table), "--unlabelled")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["role"] == "corpus"


def test_output_not_on_a_terminal_is_not_wrapped(demo: Path, tmp_path: Path) -> None:
    """Piped output keeps a long path on one line, whatever COLUMNS says (rich wrapped at 80)."""
    workdir = tmp_path / ("a-workspace-folder-with-a-rather-long-name-" * 3) / "ws"
    args = ["ingest", "--dataset", "folder", "--root", str(demo / "images"), "--name", "long"]
    result = runner.invoke(app, ["-C", str(workdir), *args], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    manifest = (workdir / "manifests" / "long.csv").resolve()
    assert f"manifest written: {manifest}" in result.stdout.splitlines()
    assert any(line.startswith(f"written {manifest} (") for line in result.stderr.splitlines())
