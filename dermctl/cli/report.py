"""`dermctl report`: collect results into the paper's Table 2 and Figure 1 (Markdown, CSV, LaTeX, PNG, SVG, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermctl.cli.choices import REPORT_FORMATS
from dermctl.cli.common import emit, get_state, handle_errors, log, out_console, parse_csv_list

NAME = "report"
SHORT_HELP = "Collect results into the paper's Table 2 and Figure 1 (Markdown, CSV, LaTeX, PNG, SVG, HTML)."
HELP = (
    SHORT_HELP
    + "\n\nReads results/<protocol>/<model>/<task>.json and runs/<name>/run.json; writes reports/table2.md, "
    "table2.csv, table2.tex, figure1.png, figure1.svg and report.html (replacing an earlier report). "
    "Cells are macro-F1 x 100 [95 % CI]; a missing result shows as an em dash, never 0. Collapsed or "
    "diverged pretraining runs are flagged. Results of one task on different test splits are refused.\n\n"
    "Example: dermctl report --tasks ham10000,pad-ufes-20 --format md,html"
)


@handle_errors
def command(
    ctx: typer.Context,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="Results folder [default: <workdir>/results].", file_okay=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Output folder [default: <workdir>/reports].", file_okay=False),
    ] = None,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="Pretraining runs, for status flags [default: runs/ beside the results folder].",
            file_okay=False,
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks", help="Comma-separated task columns, in this order [default: all, the paper's first]."
        ),
    ] = None,
    formats: Annotated[
        str, typer.Option("--format", "-f", help=f"Comma-separated outputs among {','.join(REPORT_FORMATS)}.")
    ] = ",".join(REPORT_FORMATS),
) -> None:
    from dermctl.report import make_report
    from dermctl.report.tables import to_rich

    state = get_state(ctx)
    ws = state.workspace
    report = make_report(
        results or ws.results,
        output or ws.reports,
        # explicit --results elsewhere: its sibling runs/ holds the pretraining runs behind it
        runs_dir=runs or (results.parent / "runs" if results is not None else ws.runs),
        tasks=parse_csv_list("--tasks", tasks) or None,
        formats=parse_csv_list("--format", formats),
    )
    for note in report.notes:
        log(state, f"[yellow]note:[/] {note}")
    data = dict(
        report.table.to_json(), outputs={k: str(v) for k, v in report.written.items()}, notes=report.notes
    )

    def render() -> None:
        out_console.print(to_rich(report.table))
        for fmt, path in report.written.items():
            out_console.print(f"{fmt:>4}: {path}", highlight=False)

    emit(state, data, render)
