"""Table 2 of Gröger et al.: test macro-F1 per evaluation protocol x initialisation (rows) and task (columns).

Rows follow the paper: the stratified random baseline (labelled "baseline": it is no linear probe), linear
evaluation (ImageNet, ColorMe, SimCLR, BYOL, DINO, iBOT, random, then any other init alphabetically), then fine-tuned (ImageNet, the methods, random, others), then
"linear, as published (optimistic)": `probe --protocol paper` results (the authors' untuned evaluation), kept
in their own section so that no optimistic number sits among the honest ones. kNN results are not in the
paper's table: they make Figure 1. Columns: Fitzpatrick17k,
PAD-UFES-20, HAM10000, then other tasks alphabetically. A cell is macro-F1 x 100 as "mean [lo, hi]"
(95 % bootstrap interval). A missing cell is "—" (Markdown, rich), "---" (LaTeX) and empty in CSV, never 0.
Rows from a collapsed or diverged pretraining run carry "†", unfinished runs "‡", with a footnote.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from dermctl.report.collect import Collection, ResultRecord, task_key
from dermctl.workspace import FAILED_STATUSES, INCOMPLETE_STATUSES

MISSING = "—"
MISSING_TEX = "---"
FAILED_MARK = "†"
INCOMPLETE_MARK = "‡"

# (protocol in result files, row-group label, init order)
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("linear", "linear", ("stratified", "imagenet", "colorme", "simclr", "byol", "dino", "ibot", "random")),
    ("finetune", "fine-tuned", ("imagenet", "colorme", "simclr", "byol", "dino", "ibot", "random")),
    # `probe --protocol paper` (dermctl.eval.published): shown apart, never mixed with the honest rows
    (
        "linear-paper",
        "linear, as published (optimistic)",
        ("imagenet", "colorme", "simclr", "byol", "dino", "ibot", "random"),
    ),
)
INIT_LABELS = {
    "stratified": "stratified random",
    "imagenet": "ImageNet",
    "colorme": "ColorMe",
    "simclr": "SimCLR",
    "byol": "BYOL",
    "dino": "DINO",
    "ibot": "iBOT",
    "random": "random",
}
PAPER_TASKS = ("fitzpatrick17k", "pad-ufes-20", "ham10000")
TASK_LABELS = {"fitzpatrick17k": "Fitzpatrick17k", "padufes20": "PAD-UFES-20", "ham10000": "HAM10000"}


@dataclass
class Cell:
    """One number of the table (fractions in [0, 1], shown x 100)."""

    macro_f1: float
    ci: tuple[float, float] | None
    path: str

    def text(self) -> str:
        mean = f"{100 * self.macro_f1:.1f}"
        if self.ci is None:
            return mean
        return f"{mean} [{100 * self.ci[0]:.1f}, {100 * self.ci[1]:.1f}]"


@dataclass
class TableRow:
    evaluation: str  # section label: linear | fine-tuned
    init: str  # init label as shown (ImageNet, DINO, ...)
    model: str
    label: str  # init label, plus "(model)" when several models share the init, plus marks
    cells: dict[str, Cell | None]
    marks: str = ""
    unavailable: str | None = None  # why this model has no numbers here (e.g. ImageNet weights offline)


@dataclass
class Table2:
    columns: list[str]  # task names as found in the results (or as asked)
    rows: list[TableRow]
    footnotes: list[str] = field(default_factory=list)

    def headers(self) -> list[str]:
        return [task_label(t) for t in self.columns]

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": [{"task": t, "label": task_label(t)} for t in self.columns],
            "rows": [
                {
                    "evaluation": r.evaluation,
                    "init": r.init,
                    "model": r.model,
                    "label": r.label,
                    "marks": r.marks,
                    "cells": {
                        t: None
                        if c is None
                        else {
                            "macro_f1": c.macro_f1,
                            "macro_f1_ci": list(c.ci) if c.ci else None,
                            "text": c.text(),
                            "path": c.path,
                        }
                        for t, c in r.cells.items()
                    },
                }
                for r in self.rows
            ],
            "footnotes": self.footnotes,
        }


def task_label(task: str) -> str:
    return TASK_LABELS.get(task_key(task), task)


def order_tasks(tasks: list[str]) -> list[str]:
    """The paper's task order first (Fitzpatrick17k, PAD-UFES-20, HAM10000), then others alphabetically."""
    paper = [task_key(t) for t in PAPER_TASKS]

    def key(t: str) -> tuple[int, str]:
        k = task_key(t)
        return (paper.index(k), "") if k in paper else (len(paper), t.lower())

    return sorted(dict.fromkeys(tasks), key=key)


def _init_key(init: str, order: tuple[str, ...]) -> tuple[int, str]:
    k = init.lower()
    return (order.index(k), "") if k in order else (len(order), k)


def build_table2(collection: Collection, tasks: list[str] | None = None) -> Table2:
    """Table 2 from collected results. `tasks` fixes the columns and their order (else: every task found,
    the paper's first). The `stratified` protocol is the first row of the linear section."""
    if tasks:
        columns = list(dict.fromkeys(tasks))
    else:
        columns = order_tasks(collection.tasks())
    col_of = {task_key(c): c for c in columns}
    rows: list[TableRow] = []
    footnotes: list[str] = []
    for protocol, section, order in SECTIONS:
        protocols = (protocol, "stratified") if protocol == "linear" else (protocol,)
        records = [r for r in collection.for_protocol(*protocols) if task_key(r.task) in col_of]
        by_model: dict[tuple[str, str], list[ResultRecord]] = {}
        for r in records:
            init = "stratified" if r.protocol == "stratified" else r.init.lower()
            by_model.setdefault((init, r.model), []).append(r)
        inits: dict[str, list[str]] = {}
        for init, model in by_model:
            inits.setdefault(init, []).append(model)
        for init in sorted(inits, key=lambda i: _init_key(i, order)):
            models = sorted(inits[init])
            for model in models:
                group = by_model[(init, model)]
                shown = INIT_LABELS.get(init, group[0].init)
                label = shown if len(models) == 1 else f"{shown} ({model})"
                cells: dict[str, Cell | None] = {c: None for c in columns}
                for r in sorted(group, key=lambda r: str(r.path)):
                    if r.macro_f1 is not None:
                        cells[col_of[task_key(r.task)]] = Cell(r.macro_f1, r.macro_f1_ci, str(r.path))
                marks = ""
                statuses = {r.run_status for r in group if r.run_status}
                run = next((r.run for r in group if r.run), model)
                failed = sorted(statuses & set(FAILED_STATUSES))
                unfinished = sorted(statuses & set(INCOMPLETE_STATUSES))
                if failed:
                    marks += FAILED_MARK
                    footnotes.append(
                        f"{FAILED_MARK} {label}: pretraining run {run} ended {', '.join(failed)}"
                    )
                if unfinished:
                    marks += INCOMPLETE_MARK
                    footnotes.append(
                        f"{INCOMPLETE_MARK} {label}: pretraining run {run} is {', '.join(unfinished)}"
                    )
                # the stratified random baseline is no linear probe: its own evaluation label (issue 11)
                evaluation = "baseline" if init == "stratified" else section
                rows.append(TableRow(evaluation, shown, model, label + marks, cells, marks))
        if protocol in ("linear", "finetune"):
            for u in collection.unavailable:
                init = str(u.get("init") or "").lower()
                if init not in order or (init, u["model"]) in by_model:
                    continue
                shown = INIT_LABELS.get(init, init)
                reason = str(u["reason"])
                rows.append(
                    TableRow(
                        section,
                        shown,
                        str(u["model"]),
                        f"{shown} (unavailable)",
                        dict.fromkeys(columns),
                        "",
                        reason,
                    )
                )
                note = f"{shown} ({u['model']}) unavailable: {reason}"
                if note not in footnotes:
                    footnotes.append(note)
    return Table2(columns=columns, rows=rows, footnotes=footnotes)


UNAVAILABLE = "unavailable"


def _cell_text(cell: Cell | None, missing: str = MISSING, row: TableRow | None = None) -> str:
    if cell is None and row is not None and row.unavailable:
        return UNAVAILABLE
    return missing if cell is None else cell.text()


def to_markdown(table: Table2) -> str:
    """GitHub Markdown: | evaluation | init | tasks... |, footnotes below."""
    head = ["evaluation", "init", *table.headers()]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in table.rows:
        cells = [_md_escape(_cell_text(r.cells[c], row=r)) for c in table.columns]
        lines.append("| " + " | ".join([r.evaluation, _md_escape(r.label), *cells]) + " |")
    text = "Table 2: test macro-F1 x 100 [95 % bootstrap CI]\n\n" + "\n".join(lines) + "\n"
    if table.footnotes:
        text += "\n" + "\n\n".join(table.footnotes) + "\n"
    return text


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_csv(table: Table2) -> str:
    """One row per table row; per task the macro-F1 x 100 and its CI bounds; missing values empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["evaluation", "init", "model", "marks"]
    for c in table.columns:
        label = task_label(c)
        head += [label, f"{label} ci_low", f"{label} ci_high"]
    writer.writerow(head)
    for r in table.rows:
        out: list[str] = [r.evaluation, r.init, r.model, UNAVAILABLE if r.unavailable else r.marks]
        for c in table.columns:
            cell = r.cells[c]
            if cell is None:
                out += ["", "", ""]
            else:
                lo, hi = (f"{100 * v:.1f}" for v in cell.ci) if cell.ci else ("", "")
                out += [f"{100 * cell.macro_f1:.1f}", lo, hi]
        writer.writerow(out)
    return buf.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    FAILED_MARK: r"$^\dagger$",
    INCOMPLETE_MARK: r"$^\ddagger$",
}


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table2) -> str:
    """A booktabs `table` environment; the evaluation label appears on the first row of its section."""
    n = len(table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{Test macro-F1 ($\times 100$, 95\,\% bootstrap CI).}",
        r"\label{tab:table2}",
        r"\begin{tabular}{ll" + "c" * n + "}",
        r"\toprule",
        " & ".join(["Evaluation", "Init", *(tex_escape(h) for h in table.headers())]) + r" \\",
        r"\midrule",
    ]
    previous = None
    for r in table.rows:
        if previous is not None and r.evaluation != previous:
            lines.append(r"\midrule")
        section = tex_escape(r.evaluation) if r.evaluation != previous else ""
        previous = r.evaluation
        cells = [_cell_text(r.cells[c], MISSING_TEX, r) for c in table.columns]
        lines.append(" & ".join([section, tex_escape(r.label), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in table.footnotes:
        lines.append(r"\par\footnotesize " + tex_escape(note))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_rich(table: Table2) -> Any:
    """A rich Table for the terminal."""
    from rich.table import Table

    out = Table(title="Table 2: test macro-F1 x 100 [95 % CI]", caption="\n".join(table.footnotes) or None)
    out.add_column("evaluation")
    out.add_column("init", no_wrap=True)
    for h in table.headers():
        out.add_column(h, justify="right", no_wrap=True)
    previous = None
    for r in table.rows:
        section = r.evaluation if r.evaluation != previous else ""
        out.add_row(
            section, r.label, *(_cell_text(r.cells[c], row=r) for c in table.columns), end_section=False
        )
        previous = r.evaluation
    return out
