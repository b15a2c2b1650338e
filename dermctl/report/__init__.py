"""`dermctl report`: results -> Table 2 (Markdown, CSV, LaTeX), Figure 1 (PNG, SVG) and report.html.

The report reads result files (and pretraining run status) only; every output is written atomically
under the output folder and replaces an earlier report there (reports are derived, never source data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dermctl.errors import UsageError
from dermctl.report.collect import Collection, collect
from dermctl.report.figures import Figure1Data, figure1_data, render_figure1, render_skin_types
from dermctl.report.html import render_html
from dermctl.report.sections import skin_type_tables
from dermctl.report.tables import Table2, build_table2, to_csv, to_latex, to_markdown
from dermctl.workspace import atomic_write_bytes, atomic_write_text

FORMATS = ("md", "csv", "tex", "png", "svg", "html")
FILE_NAMES = {
    "md": "table2.md",
    "csv": "table2.csv",
    "tex": "table2.tex",
    "png": "figure1.png",
    "svg": "figure1.svg",
    "html": "report.html",
}

__all__ = ["FORMATS", "Report", "make_report", "parse_formats"]


@dataclass
class Report:
    """What `make_report` built and where it wrote it."""

    table: Table2
    figure: Figure1Data
    collection: Collection
    written: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_formats(formats: list[str] | None) -> list[str]:
    """Validate `--format` items (all formats when none is given)."""
    if not formats:
        return list(FORMATS)
    bad = [f for f in formats if f.lower() not in FORMATS]
    if bad:
        raise UsageError(
            f"--format: {', '.join(bad)} not known (expected a comma-separated list of {', '.join(FORMATS)})"
        )
    return list(dict.fromkeys(f.lower() for f in formats))


def make_report(
    results_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    runs_dir: str | os.PathLike[str] | None = None,
    tasks: list[str] | None = None,
    formats: list[str] | None = None,
) -> Report:
    """Collect results, build Table 2 and Figure 1, and write the requested formats to `output_dir`.

    Checks come first (formats, results present, consistent test splits), so a refused report writes
    nothing. Figure files are skipped (with a note) when there is no kNN curve."""
    wanted = parse_formats(formats)
    collection = collect(results_dir, runs_dir=runs_dir, tasks=tasks)
    table = build_table2(collection, tasks=tasks)
    figure = figure1_data(collection, tasks=tasks or table.columns)
    report = Report(table=table, figure=figure, collection=collection)
    out = Path(output_dir)
    texts = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
    for fmt in ("md", "csv", "tex"):
        if fmt in wanted:
            report.written[fmt] = atomic_write_text(out / FILE_NAMES[fmt], texts[fmt](table))
    images: dict[str, bytes] = {}
    if figure.series:
        for fmt in ("png", "svg"):
            if fmt in wanted or (fmt == "svg" and "html" in wanted):
                images[fmt] = render_figure1(figure, fmt)
            if fmt in wanted:
                report.written[fmt] = atomic_write_bytes(out / FILE_NAMES[fmt], images[fmt])
    elif {"png", "svg"} & set(wanted):
        report.notes.append("no kNN curves among the results: Figure 1 not written")
    if "html" in wanted:
        skin = {t.task: render_skin_types(t) for t in skin_type_tables(collection, table.columns)}
        page = render_html(table, collection, svg=images.get("svg"), png=images.get("png"), skin_figures=skin)
        report.written["html"] = atomic_write_text(out / FILE_NAMES["html"], page)
    return report
