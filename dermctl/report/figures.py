"""Figure 1 of Gröger et al.: kNN macro-F1 on frozen features against labelled samples per class.

One panel per task, one line per model (mean over repeats), a shaded band for the curve's 95 % interval
(`macro_f1_ci` of each curve point), log x-axis. `knn --protocol paper` results are drawn dashed in the
model's colour at their `macro_f1_max` (the authors' figure plots the maximum over repeats), labelled "as
published (optimistic)"; the stratified random baseline of a task, when it has a result, is a grey dotted
horizontal line: chance. The "all labels" point is drawn one log-decade step
beyond the largest shot count and its tick is labelled "all" (results do not record the per-class train
size, which differs between classes). Rendered with matplotlib's object API (Agg canvas, no pyplot
state), as PNG and SVG bytes with fixed metadata so that re-running gives the same files.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

from dermctl.report.collect import Collection, task_key
from dermctl.report.tables import INIT_LABELS, SECTIONS, order_tasks, task_label
from dermctl.workspace import FAILED_STATUSES

_INIT_ORDER = SECTIONS[0][2]  # the paper's order of initialisations

FORMATS = ("png", "svg")


@dataclass
class Series:
    """One model's curve on one task: x = shots per class ("all" as the string "all")."""

    task: str
    model: str
    label: str
    shots: list[int | str]
    mean: list[float]
    lo: list[float | None]
    hi: list[float | None]
    path: str = ""
    published: bool = False  # knn-paper: the authors' optimistic protocol (maximum over repeats)
    base_label: str = ""  # the model's label without the protocol note (shared colour)


@dataclass
class Figure1Data:
    tasks: list[str]
    series: list[Series] = field(default_factory=list)
    chance: dict[str, float] = field(default_factory=dict)  # task -> stratified random macro-F1

    def to_json(self) -> list[dict[str, Any]]:
        return [s.__dict__ for s in self.series]


def _shots_key(shots: Any) -> tuple[int, float]:
    return (1, 0.0) if shots == "all" else (0, float(shots))


def figure1_data(collection: Collection, tasks: list[str] | None = None) -> Figure1Data:
    """The kNN curves of `collection`, per task (the table's column order), one series per model."""
    records = [r for r in collection.for_protocol("knn", "knn-paper") if r.curve]
    found = order_tasks([r.task for r in records])
    if tasks:
        wanted = {task_key(t): t for t in tasks}
        found = [t for t in tasks if task_key(t) in {task_key(r.task) for r in records}]
        records = [r for r in records if task_key(r.task) in wanted]
    inits: dict[str, set[str]] = {}
    for r in records:
        inits.setdefault(r.init.lower(), set()).add(r.model)
    series: list[Series] = []

    def order(r: Any) -> tuple[int, str, str, str]:
        init = r.init.lower()
        return (_INIT_ORDER.index(init) if init in _INIT_ORDER else len(_INIT_ORDER), init, r.model, r.task)

    for r in sorted(records, key=order):
        published = r.protocol == "knn-paper"
        y_key = "macro_f1_max" if published else "macro_f1_mean"
        base = INIT_LABELS.get(r.init.lower(), r.init)
        base = base if len(inits[r.init.lower()]) == 1 else f"{base} ({r.model})"
        if r.run_status in FAILED_STATUSES:
            base += f" † {r.run_status}"
        label = f"{base}, as published (optimistic)" if published else base
        points = [p for p in r.curve if isinstance(p, dict) and isinstance(p.get(y_key), int | float)]
        points.sort(key=lambda p: _shots_key(p.get("shots")))
        if not points:
            continue
        lo: list[float | None] = []
        hi: list[float | None] = []
        for p in points:
            ci = None if published else p.get("macro_f1_ci")  # a maximum has no interval
            ok = isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci)
            lo.append(float(ci[0]) if ok else None)
            hi.append(float(ci[1]) if ok else None)
        task = next((t for t in found if task_key(t) == task_key(r.task)), r.task)
        series.append(
            Series(
                task=task,
                model=r.model,
                label=label,
                shots=["all" if p.get("shots") == "all" else int(p["shots"]) for p in points],
                mean=[float(p[y_key]) for p in points],
                lo=lo,
                hi=hi,
                path=str(r.path),
                published=published,
                base_label=base,
            )
        )
    chance = {}
    for r in collection.for_protocol("stratified"):
        task = next((t for t in found if task_key(t) == task_key(r.task)), None)
        if task is not None and r.macro_f1 is not None:
            chance[task] = r.macro_f1
    return Figure1Data(tasks=found, series=series, chance=chance)


def _x_positions(data: Figure1Data) -> tuple[float | None, list[int]]:
    numeric = sorted({s for ser in data.series for s in ser.shots if s != "all"})
    has_all = any("all" in ser.shots for ser in data.series)
    top = max(numeric) if numeric else 1
    all_x = float(10 ** (math.floor(math.log10(top)) + 1)) if has_all else None
    if all_x is not None and all_x <= top:
        all_x = top * 10.0
    return all_x, [int(v) for v in numeric]


def render_figure1(data: Figure1Data, fmt: str) -> bytes:
    """PNG or SVG bytes of Figure 1 (a figure saying "no kNN results" when there are no curves)."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {FORMATS}")
    import matplotlib
    from matplotlib.figure import Figure

    n = max(1, len(data.tasks))
    all_x, numeric = _x_positions(data)
    models = list(dict.fromkeys(s.base_label or s.label for s in data.series))
    colours = matplotlib.colormaps["tab10"]
    colour = {m: colours(i % 10) for i, m in enumerate(models)}
    with matplotlib.rc_context({"svg.hashsalt": "dermctl-figure1", "font.size": 9}):
        fig = Figure(figsize=(4.0 * n, 3.4), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        if not data.series:
            axes[0].text(0.5, 0.5, "no kNN results", ha="center", va="center", transform=axes[0].transAxes)
            axes[0].set_axis_off()
        for ax, task in zip(axes, data.tasks, strict=False):
            for s in (s for s in data.series if s.task == task):
                xs = [all_x if v == "all" else float(v) for v in s.shots]
                ys = [100 * v for v in s.mean]
                c = colour[s.base_label or s.label]
                style = "--" if s.published else "-"
                ax.plot(xs, ys, style, marker="o", markersize=3, color=c, label=s.label)
                band = [
                    (x, 100 * lo, 100 * hi)
                    for x, lo, hi in zip(xs, s.lo, s.hi, strict=True)
                    if lo is not None and hi is not None
                ]
                if band:
                    bx, blo, bhi = zip(*band, strict=True)
                    ax.fill_between(bx, blo, bhi, color=c, alpha=0.2, linewidth=0)
            if task in data.chance:
                ax.axhline(
                    100 * data.chance[task],
                    color="grey",
                    linestyle=":",
                    linewidth=1,
                    label="stratified (chance)",
                )
            ax.set_xscale("log")
            ticks = [float(v) for v in numeric] + ([all_x] if all_x else [])
            if ticks:
                ax.set_xticks(ticks, [str(v) for v in numeric] + (["all"] if all_x else []))
                ax.minorticks_off()
            ax.set_title(task_label(task))
            ax.set_xlabel("labelled samples per class")
            ax.set_ylabel("macro-F1 (x 100)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle("Figure 1: kNN on frozen features")
        buf = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(buf, format=fmt, dpi=150, metadata=metadata)
    return buf.getvalue()


def render_skin_types(table: Any) -> bytes:
    """SVG bytes of a grouped bar chart: macro-F1 per Fitzpatrick skin type (x) per model (bars) of one
    task's `SkinTypeTable` (dermctl.report.sections); missing values leave a gap, never a zero bar."""
    import matplotlib
    from matplotlib.figure import Figure

    labels = [f"{proto}: {model}" for proto, model, _ in table.rows]
    n, k = len(table.types), max(1, len(table.rows))
    colours = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context({"svg.hashsalt": "dermctl-skin-types", "font.size": 9}):
        fig = Figure(figsize=(max(4.0, 0.9 * n + 2.5) + 3.0, 3.0), layout="constrained")
        ax = fig.subplots()
        width = 0.8 / k
        for i, (_, _, cells) in enumerate(table.rows):
            xs = [j - 0.4 + width * (i + 0.5) for j, v in enumerate(cells) if v is not None]
            ys = [100 * v for v in cells if v is not None]
            ax.bar(xs, ys, width=width, color=colours(i % 10), label=labels[i])
        ticks = [f"{t}\n(n={table.counts[t]})" if t in table.counts else t for t in table.types]
        ax.set_xticks(range(n), ticks)
        ax.set_xlabel("Fitzpatrick skin type")
        ax.set_ylabel("macro-F1 (x 100)")
        ax.set_title(f"{task_label(table.task)}: macro-F1 per skin type")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()
