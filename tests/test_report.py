"""Report: Table 2 (Markdown/CSV/LaTeX), Figure 1 (PNG/SVG), report.html from hand-written result files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dermctl.errors import DataError, UsageError
from dermctl.report import make_report, parse_formats
from dermctl.report.collect import collect
from dermctl.report.figures import figure1_data, render_figure1
from dermctl.report.tables import build_table2, order_tasks, to_csv, to_latex, to_markdown

SPLIT = {"fitzpatrick17k": "a" * 64, "pad-ufes-20": "b" * 64, "ham10000": "c" * 64}


def write_result(
    results: Path,
    protocol: str,
    model: str,
    task: str,
    f1: float,
    ci: tuple[float, float] | None = None,
    init: str | None = None,
    split: str | None = None,
    curve: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    payload: dict[str, Any] = {
        "schema": "dermctl.result/1",
        "protocol": protocol,
        "model": model,
        "init": init or model.split("-")[0],
        "backbone": "resnet50",
        "task": task,
        "class_names": ["a", "b"],
        "test_split_sha256": split or SPLIT.get(task, "d" * 64),
        "metrics": {"macro_f1": f1, "macro_f1_ci": list(ci) if ci else None, "n": 10},
        "config": {},
        "inputs": {},
        "provenance": {"versions": {"dermctl": "0.1.0"}, "created": "2026-01-01T00:00:00+00:00"},
    }
    if curve is not None:
        payload["curve"] = curve
    payload.update(extra)
    path = results / protocol / model / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))
    return path


def curve(base: float) -> list[dict[str, Any]]:
    # deliberately unsorted: "all" first
    points = [("all", base + 0.3), (1, base), (10, base + 0.2), (5, base + 0.1)]
    return [
        {
            "shots": s,
            "repeats": 5,
            "macro_f1_mean": m,
            "macro_f1_std": 0.01,
            "macro_f1_ci": [m - 0.02, m + 0.02],
            "k": 20,
        }
        for s, m in points
    ]


# ------------------------------------------------------------------ Table 2


def test_missing_cell_exact_text(tmp_path: Path) -> None:
    res = tmp_path / "results"
    write_result(res, "linear", "imagenet-resnet50", "fitzpatrick17k", 0.51, (0.48, 0.54), init="imagenet")
    write_result(res, "linear", "imagenet-resnet50", "ham10000", 0.541, (0.5, 0.58), init="imagenet")
    write_result(res, "finetune", "imagenet-resnet50", "pad-ufes-20", 0.615, (0.6, 0.63), init="imagenet")
    table = build_table2(collect(res))
    assert table.columns == ["fitzpatrick17k", "pad-ufes-20", "ham10000"]
    md = to_markdown(table).splitlines()
    assert "| evaluation | init | Fitzpatrick17k | PAD-UFES-20 | HAM10000 |" in md
    assert "| linear | ImageNet | 51.0 [48.0, 54.0] | — | 54.1 [50.0, 58.0] |" in md
    assert "| fine-tuned | ImageNet | — | 61.5 [60.0, 63.0] | — |" in md
    csv_lines = to_csv(table).splitlines()
    assert csv_lines[0] == (
        "evaluation,init,model,marks,Fitzpatrick17k,Fitzpatrick17k ci_low,Fitzpatrick17k ci_high,"
        "PAD-UFES-20,PAD-UFES-20 ci_low,PAD-UFES-20 ci_high,HAM10000,HAM10000 ci_low,HAM10000 ci_high"
    )
    assert csv_lines[1] == "linear,ImageNet,imagenet-resnet50,,51.0,48.0,54.0,,,,54.1,50.0,58.0"
    assert csv_lines[2] == "fine-tuned,ImageNet,imagenet-resnet50,,,,,61.5,60.0,63.0,,,"
    tex = to_latex(table)
    assert r"linear & ImageNet & 51.0 [48.0, 54.0] & --- & 54.1 [50.0, 58.0] \\" in tex
    assert r"fine-tuned & ImageNet & --- & 61.5 [60.0, 63.0] & --- \\" in tex
    assert "| 0.0" not in to_markdown(table) and ",0.0," not in to_csv(table)


def test_cell_without_ci_and_csv_never_zero(tmp_path: Path) -> None:
    res = tmp_path / "results"
    write_result(res, "linear", "dino-a", "ham10000", 0.5, None, init="dino")
    write_result(res, "linear", "byol-a", "pad-ufes-20", 0.0, (0.0, 0.0), init="byol")
    table = build_table2(collect(res))
    md = to_markdown(table)
    assert "| linear | DINO | — | 50.0 |" in md
    # a real zero is a number; a missing one is a dash
    assert "| linear | BYOL | 0.0 [0.0, 0.0] | — |" in md


def test_rows_and_columns_in_paper_order(tmp_path: Path) -> None:
    res = tmp_path / "results"
    tasks = ["zzz-private", "ham10000", "pad-ufes-20", "fitzpatrick17k"]
    rows = [
        ("finetune", "ibot-vit", "ibot"),
        ("linear", "random-resnet50", "random"),
        ("linear", "ibot-vit", "ibot"),
        ("linear", "mae-vit", "mae"),
        ("linear", "dino-b", "dino"),
        ("linear", "simclr-r50", "simclr"),
        ("linear", "dino-a", "dino"),
        ("linear", "imagenet-resnet50", "imagenet"),
        ("stratified", "stratified", "stratified"),
        ("linear", "colorme-r50", "colorme"),
        ("linear", "byol-r50", "byol"),
        ("finetune", "imagenet-resnet50", "imagenet"),
        ("finetune", "random-resnet50", "random"),
        ("finetune", "colorme-r50", "colorme"),
    ]
    for protocol, model, init in rows:
        for t in tasks:
            write_result(res, protocol, model, t, 0.5, (0.4, 0.6), init=init)
    table = build_table2(collect(res))
    assert table.columns == ["fitzpatrick17k", "pad-ufes-20", "ham10000", "zzz-private"]
    assert order_tasks(["HAM10000", "other", "PAD-UFES-20"]) == ["PAD-UFES-20", "HAM10000", "other"]
    got = [(r.evaluation, r.label) for r in table.rows]
    assert got == [
        ("baseline", "stratified random"),
        ("linear", "ImageNet"),
        ("linear", "ColorMe"),
        ("linear", "SimCLR"),
        ("linear", "BYOL"),
        ("linear", "DINO (dino-a)"),
        ("linear", "DINO (dino-b)"),
        ("linear", "iBOT"),
        ("linear", "random"),
        ("linear", "mae"),
        ("fine-tuned", "ImageNet"),
        ("fine-tuned", "ColorMe"),
        ("fine-tuned", "iBOT"),
        ("fine-tuned", "random"),
    ]
    # --tasks picks and orders columns; a task without any result (a typo) is refused, naming it
    table = build_table2(
        collect(res, tasks=["ham10000", "fitzpatrick17k"]), tasks=["ham10000", "fitzpatrick17k"]
    )
    assert table.columns == ["ham10000", "fitzpatrick17k"]
    with pytest.raises(DataError, match="isic2019"):
        collect(res, tasks=["ham10000", "isic2019"])


def test_mismatched_test_splits_refused_naming_both_files(tmp_path: Path) -> None:
    res = tmp_path / "results"
    a = write_result(res, "linear", "dino-a", "ham10000", 0.5, init="dino", split="1" * 64)
    b = write_result(res, "finetune", "dino-a", "ham10000", 0.6, init="dino", split="2" * 64)
    write_result(res, "linear", "dino-a", "pad-ufes-20", 0.5, init="dino")
    with pytest.raises(DataError) as info:
        collect(res)
    msg = info.value.message
    assert str(a) in msg and str(b) in msg and "\n" not in msg
    out = tmp_path / "reports"
    with pytest.raises(DataError):
        make_report(res, out)
    assert not out.exists()  # refused before writing anything
    # reporting only the other task is fine
    assert [r.task for r in collect(res, tasks=["pad-ufes-20"]).records] == ["pad-ufes-20"]


def test_collapsed_run_flagged(tmp_path: Path) -> None:
    res, runs = tmp_path / "results", tmp_path / "runs"
    write_result(res, "linear", "dino-a", "ham10000", 0.3, (0.2, 0.4), init="dino")
    write_result(res, "linear", "byol-b", "ham10000", 0.4, (0.3, 0.5), init="byol")
    write_result(res, "linear", "ibot-c", "ham10000", 0.6, (0.5, 0.7), init="ibot")
    for name, status in (("dino-a", "collapsed"), ("byol-b", "diverged"), ("ibot-c", "finished")):
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(json.dumps({"status": status, "name": name}))
    table = build_table2(collect(res, runs_dir=runs))
    labels = [r.label for r in table.rows]
    assert labels == ["BYOL†", "DINO†", "iBOT"]
    assert any("dino-a" in n and "collapsed" in n and n.startswith("†") for n in table.footnotes)
    assert any("byol-b" in n and "diverged" in n for n in table.footnotes)
    md = to_markdown(table)
    assert "| linear | DINO† | 30.0 [20.0, 40.0] |" in md and "pretraining run dino-a ended collapsed" in md
    assert r"DINO$^\dagger$" in to_latex(table)
    assert to_csv(table).splitlines()[2].startswith("linear,DINO,dino-a,†,30.0")


def test_no_results_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    with pytest.raises(DataError, match="no result files"):
        collect(tmp_path / "results")
    with pytest.raises(DataError, match="not a folder"):
        collect(tmp_path / "nope")
    bad = tmp_path / "results" / "linear" / "m" / "t.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(DataError, match=str(bad)):
        collect(tmp_path / "results")


def test_parse_formats() -> None:
    assert parse_formats(None) == ["md", "csv", "tex", "png", "svg", "html"]
    assert parse_formats(["md", "HTML"]) == ["md", "html"]
    with pytest.raises(UsageError, match="--format: pdf"):
        parse_formats(["md", "pdf"])


# ------------------------------------------------------------------ Figure 1 and HTML


def test_figure_data_orders_shots_with_all_last(tmp_path: Path) -> None:
    res = tmp_path / "results"
    write_result(res, "knn", "ibot-vit", "ham10000", 0.7, init="ibot", curve=curve(0.4))
    write_result(res, "knn", "imagenet-r50", "ham10000", 0.6, init="imagenet", curve=curve(0.3))
    write_result(res, "knn", "imagenet-r50", "pad-ufes-20", 0.6, init="imagenet", curve=curve(0.2))
    data = figure1_data(collect(res))
    assert data.tasks == ["pad-ufes-20", "ham10000"]
    s = next(s for s in data.series if s.model == "ibot-vit")
    assert s.shots == [1, 5, 10, "all"] and s.label == "iBOT"
    assert s.mean == pytest.approx([0.4, 0.5, 0.6, 0.7])
    assert s.lo[0] == pytest.approx(0.38) and s.hi[-1] == pytest.approx(0.72)


def test_published_protocol_shown_apart_and_chance_line(tmp_path: Path) -> None:
    """`--protocol paper` results: their own Table 2 section and dashed Figure 1 lines at the maximum over
    repeats; the stratified baseline is the chance line of its task."""
    res = tmp_path / "results"
    write_result(res, "linear", "ibot-vit", "ham10000", 0.60, (0.55, 0.65), init="ibot")
    write_result(res, "linear-paper", "ibot-vit", "ham10000", 0.70, (0.66, 0.74), init="ibot")
    write_result(res, "stratified", "stratified", "ham10000", 0.14, init="stratified")
    write_result(res, "knn", "ibot-vit", "ham10000", 0.7, init="ibot", curve=curve(0.4))
    paper = [dict(p, macro_f1_max=p["macro_f1_mean"] + 0.05) for p in curve(0.4)]
    write_result(res, "knn-paper", "ibot-vit", "ham10000", 0.75, init="ibot", curve=paper)
    table = build_table2(collect(res))
    sections = [(r.evaluation, r.label) for r in table.rows]
    assert sections == [
        ("baseline", "stratified random"),
        ("linear", "iBOT"),
        ("linear, as published (optimistic)", "iBOT"),
    ]
    assert table.rows[2].cells["ham10000"].macro_f1 == pytest.approx(0.70)
    data = figure1_data(collect(res))
    honest, published = sorted(data.series, key=lambda s: s.published)
    assert not honest.published and honest.label == "iBOT"
    assert published.label == "iBOT, as published (optimistic)" and published.base_label == "iBOT"
    assert published.mean == pytest.approx([0.45, 0.55, 0.65, 0.75]) and published.lo == [None] * 4
    assert data.chance == {"ham10000": pytest.approx(0.14)}
    svg = render_figure1(data, "svg").decode()
    assert "as published (optimistic)" in svg and "stratified (chance)" in svg


def _parse_html(text: str) -> list[str]:
    tags: list[str] = []

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            tags.append(tag)

    P().feed(text)
    return tags


def test_make_report_writes_valid_files(tmp_path: Path) -> None:
    res, runs, out = tmp_path / "results", tmp_path / "runs", tmp_path / "reports"
    write_result(res, "knn", "ibot-vit", "ham10000", 0.7, (0.65, 0.75), init="ibot", curve=curve(0.4))
    write_result(res, "knn", "colorme-r50", "ham10000", 0.6, (0.55, 0.65), init="colorme", curve=curve(0.3))
    write_result(res, "linear", "ibot-vit", "ham10000", 0.72, (0.7, 0.74), init="ibot")
    write_result(res, "linear", "dino-x", "ham10000", 0.1, (0.05, 0.15), init="dino")
    (runs / "dino-x").mkdir(parents=True)
    (runs / "dino-x" / "run.json").write_text(json.dumps({"status": "collapsed"}))
    report = make_report(res, out, runs_dir=runs)
    assert set(report.written) == {"md", "csv", "tex", "png", "svg", "html"}
    png = (out / "figure1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    svg_root = ET.fromstring((out / "figure1.svg").read_bytes())
    assert svg_root.tag.endswith("svg")
    page = (out / "report.html").read_text()
    tags = _parse_html(page)
    assert "svg" in tags and "table" in tags
    assert "72.0 [70.0, 74.0]" in page and "&mdash;" in page and "collapsed" in page
    assert "Provenance" in page and "ibot-vit" in page
    assert not list(out.glob(".*.tmp"))
    # re-running replaces the report with identical text
    md = (out / "table2.md").read_text()
    svg = (out / "figure1.svg").read_bytes()
    make_report(res, out, runs_dir=runs, formats=["md", "svg"])
    assert (out / "table2.md").read_text() == md and (out / "figure1.svg").read_bytes() == svg


def test_html_falls_back_to_png_and_no_figure_without_knn(tmp_path: Path) -> None:
    res, out = tmp_path / "results", tmp_path / "reports"
    write_result(res, "linear", "ibot-vit", "ham10000", 0.72, (0.7, 0.74), init="ibot")
    report = make_report(res, out, formats=["png", "html"])
    assert "png" not in report.written and report.notes
    assert "No kNN curves" in (out / "report.html").read_text()
    data = figure1_data(collect(res))
    assert data.series == []
    assert render_figure1(data, "png")[:4] == b"\x89PNG"


def _rich_result(res: Path, protocol: str, model: str, init: str, f1: float, ci: tuple[float, float]) -> None:
    """A result as dermctl 0.2 writes it: per-class recall, confusion, skin types, data, predictions."""
    classes = ["a", "b"]
    per_skin = {t: {"macro_f1": f1 - 0.01 * int(t), "n": 40} for t in ("1", "2", "5")}
    write_result(
        res,
        protocol,
        model,
        "ham10000",
        f1,
        ci,
        init=init,
        curve=[
            {
                "shots": 1,
                "repeats": 5,
                "macro_f1_mean": f1 - 0.2,
                "macro_f1_std": 0.01,
                "macro_f1_ci": [f1 - 0.22, f1 - 0.18],
            },
            {"shots": "all", "repeats": 1, "macro_f1_mean": f1, "macro_f1_std": 0.0, "macro_f1_ci": list(ci)},
        ],
        per_skin_type=per_skin,
        data={
            "task": "ham10000",
            "manifest": "/data/ham10000.csv",
            "class_counts": {
                "train": {"a": 50, "b": 20},
                "val": {"a": 9, "b": 4},
                "test": {"a": 80, "b": 40},
            },
        },
        predictions={"sha256": ["x"] * 3, "y_true": [0, 1, 1], "y_pred": [0, 1, 0]},
        class_names=classes,
        metrics={
            "macro_f1": f1,
            "macro_f1_ci": list(ci),
            "n": 120,
            "per_class_f1": {"a": f1 + 0.05, "b": f1 - 0.05},
            "per_class_recall": {"a": 0.9, "b": 0.4},
            "confusion": [[72, 8], [24, 16]],
        },
    )


def _sections(page: str) -> set[str]:
    ids: set[str] = set()

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: Any) -> None:
            ids.update(v for k, v in attrs if k == "id" and v)

    P().feed(page)
    return ids


def test_report_html_has_every_section_a_reader_needs(tmp_path: Path) -> None:
    res, out = tmp_path / "results", tmp_path / "reports"
    _rich_result(res, "knn", "ibot-vit", "ibot", 0.70, (0.66, 0.74))
    _rich_result(res, "knn", "imagenet-r50", "imagenet", 0.55, (0.50, 0.60))
    _rich_result(res, "knn", "random-r50", "random", 0.68, (0.63, 0.73))
    _rich_result(res, "linear", "ibot-vit", "ibot", 0.72, (0.70, 0.74))
    write_result(res, "stratified", "stratified", "ham10000", 0.14, init="stratified")
    make_report(res, out)
    page = (out / "report.html").read_text()
    assert {
        "verdict",
        "table2",
        "published",
        "figure1",
        "per-class",
        "confusion",
        "skin-type",
        "data",
        "provenance",
    } <= _sections(page)
    # the verdict: iBOT ahead of ImageNet (intervals apart), within noise of random (they overlap)
    assert "iBOT (ibot-vit) 70.0 [66.0, 74.0]; ahead of ImageNet (imagenet-r50) 55.0 [50.0, 60.0]" in page
    assert "within noise of random (random-r50) 68.0 [63.0, 73.0]" in page
    assert "at 1 labelled image per class: iBOT (ibot-vit) 50.0" in page
    # per class F1 / recall, confusion counts, skin types with n, class counts per split, manifest
    assert "75.0 / 90.0" in page and "65.0 / 40.0" in page
    assert '<td class="num diag">72</td>' in page and '<td class="num">24</td>' in page
    assert "type 5 (n=40)" in page and 'class="skin-type"' in page
    assert "/data/ham10000.csv" in page and '<td class="num">80</td>' in page
    # the study's Table 2 beside the user's: iBOT linear on HAM10000 published 72.0, yours 72.0 [70.0, 74.0]
    published = page[page.index('id="published"') : page.index('id="figure1"')]
    assert "iBOT (ibot-vit) 72.0 [70.0, 74.0]" in published and "14.0" in published
    assert "HAM10000 (published)" in published
    # a small test split gets a caveat; wide tables scroll
    assert "The test split has 120 images" in page and 'class="scroll"' in page


def test_report_without_new_fields_says_so(tmp_path: Path) -> None:
    """Results from before 0.2 (no recall, confusion, data): the sections say what is missing."""
    res, out = tmp_path / "results", tmp_path / "reports"
    write_result(res, "linear", "ibot-vit", "mytask", 0.72, (0.7, 0.74), init="ibot")
    make_report(res, out, formats=["html"])
    page = (out / "report.html").read_text()
    assert "No result stores its test predictions" in page
    assert "Class counts are not recorded" in page
    assert "None of the study's tasks" in page
    assert "No task among the results records skin types" in page


def test_unavailable_model_is_a_row_with_its_reason(tmp_path: Path) -> None:
    """An ImageNet model that `embed` could not load offline is shown as unavailable, never dropped."""
    from dermctl.results import clear_unavailable, record_unavailable

    res, out = tmp_path / "results", tmp_path / "reports"
    write_result(res, "linear", "ibot-vit", "ham10000", 0.72, (0.7, 0.74), init="ibot")
    record_unavailable(
        res, "imagenet-resnet50", "imagenet", "resnet50", "ImageNet weights offline", ["ham10000"]
    )
    report = make_report(res, out)
    row = next(r for r in report.table.rows if r.model == "imagenet-resnet50")
    assert row.label == "ImageNet (unavailable)" and row.unavailable == "ImageNet weights offline"
    assert "ImageNet (imagenet-resnet50) unavailable: ImageNet weights offline" in report.table.footnotes
    md = (out / "table2.md").read_text()
    assert "| ImageNet (unavailable) | unavailable |" in md
    assert "imagenet-resnet50,unavailable" in (out / "table2.csv").read_text()
    assert "; ImageNet unavailable here (ImageNet weights offline)" in (out / "report.html").read_text()
    clear_unavailable(res, "imagenet-resnet50")
    assert not any(r.model == "imagenet-resnet50" for r in make_report(res, out).table.rows)


def test_method_by_backbone_grid(tmp_path: Path) -> None:
    """§4's ablation: a method on two backbones makes a grid, with each backbone's own baselines."""
    res, out = tmp_path / "results", tmp_path / "reports"

    def put(protocol: str, model: str, init: str, backbone: str, f1: float) -> None:
        path = write_result(res, protocol, model, "ham10000", f1, (f1 - 0.02, f1 + 0.02), init=init)
        data = json.loads(path.read_text())
        data["backbone"] = backbone
        path.write_text(json.dumps(data))

    put("linear", "dino-resnet50", "dino", "resnet50", 0.50)
    put("linear", "dino-vit", "dino", "vit_tiny_patch16_224", 0.60)
    put("linear", "ibot-vit", "ibot", "vit_tiny_patch16_224", 0.65)
    put("linear", "random-resnet50", "random", "resnet50", 0.30)
    make_report(res, out, formats=["html"])
    from dermctl.report.sections import ablation_grids

    (grid,) = ablation_grids(collect(res), ["ham10000"])
    assert grid.protocol == "linear" and grid.backbones == ["resnet50", "vit_tiny_patch16_224"]
    rows = {init: [None if c is None else round(c.value, 2) for c in cells] for init, cells in grid.rows}
    assert rows == {"DINO": [0.5, 0.6], "iBOT": [None, 0.65], "random": [0.3, None]}
    page = (out / "report.html").read_text()
    assert 'id="ablation"' in page and "60.0 [58.0, 62.0]" in page
