"""What the report says per task beyond Table 2 and Figure 1: the verdict, per-class F1 and recall,
confusion matrices, the skin-type breakdown, the data behind each result, and the study's published
Table 2 beside the user's numbers.

Everything here is computed from result files only (`Collection`), like the rest of the report; results
from before these fields existed simply leave their cells missing. The HTML page (`report.html`) renders
these structures; they are plain data so that tests can check them without parsing HTML.

Choices (the issue is silent; documented in docs/report.md):
- The verdict compares every *pretrained* model (any init other than ImageNet, random and the stratified
  baseline; best first, none singled out, since that would be a choice made on test) with ImageNet and
  random init on the same backbone where such a baseline exists, for the first protocol of kNN, linear,
  fine-tuned that has one, at the fewest shots every compared model has and at "all". "Ahead" is said only when the two 95 %
  intervals do not overlap; otherwise "within noise".
- A test split of fewer than SMALL_TEST images gets a caveat: one image moves macro-F1 by several points.
- Published values: Gröger et al. Table 2 (linear and fine-tuned rows, macro-F1 x 100 on the test sets),
  shown for Fitzpatrick17k, PAD-UFES-20 and HAM10000 only and always labelled "published".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dermctl.report.collect import Collection, ResultRecord, task_key
from dermctl.report.tables import INIT_LABELS, PAPER_TASKS

SMALL_TEST = 200
BASELINE_INITS = ("imagenet", "random", "stratified")
HONEST_PROTOCOLS = ("knn", "linear", "finetune")
PROTOCOL_LABELS = {
    "knn": "kNN",
    "linear": "linear",
    "finetune": "fine-tuned",
    "stratified": "baseline",
    "knn-paper": "kNN, as published (optimistic)",
    "linear-paper": "linear, as published (optimistic)",
}

# Gröger et al., Table 2: test macro-F1 x 100 (copied from the paper). Keys: (protocol, init).
PUBLISHED_TABLE2: dict[tuple[str, str], dict[str, float]] = {
    ("stratified", "stratified"): {"fitzpatrick17k": 33.4, "pad-ufes-20": 18.0, "ham10000": 14.0},
    ("linear", "imagenet"): {"fitzpatrick17k": 51.0, "pad-ufes-20": 49.7, "ham10000": 54.1},
    ("linear", "colorme"): {"fitzpatrick17k": 44.8, "pad-ufes-20": 42.2, "ham10000": 47.0},
    ("linear", "simclr"): {"fitzpatrick17k": 37.0, "pad-ufes-20": 32.7, "ham10000": 28.2},
    ("linear", "byol"): {"fitzpatrick17k": 48.1, "pad-ufes-20": 34.4, "ham10000": 44.4},
    ("linear", "dino"): {"fitzpatrick17k": 46.7, "pad-ufes-20": 44.2, "ham10000": 57.2},
    ("linear", "ibot"): {"fitzpatrick17k": 53.0, "pad-ufes-20": 58.2, "ham10000": 72.0},
    ("finetune", "imagenet"): {"fitzpatrick17k": 72.1, "pad-ufes-20": 61.5, "ham10000": 79.0},
    ("finetune", "colorme"): {"fitzpatrick17k": 71.0, "pad-ufes-20": 61.7, "ham10000": 73.1},
    ("finetune", "ibot"): {"fitzpatrick17k": 73.9, "pad-ufes-20": 62.3, "ham10000": 82.0},
}


def model_label(record: ResultRecord) -> str:
    init = INIT_LABELS.get(record.init.lower(), record.init)
    return init if init == record.model else f"{init} ({record.model})"


def _ci(point: dict[str, Any] | None) -> tuple[float, float] | None:
    ci = (point or {}).get("macro_f1_ci")
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
        return float(ci[0]), float(ci[1])
    return None


@dataclass
class Score:
    """One model's macro-F1 at one shot count, with its 95 % interval."""

    model: str
    label: str
    shots: Any
    value: float
    ci: tuple[float, float] | None

    def text(self) -> str:
        body = f"{100 * self.value:.1f}"
        if self.ci:
            body += f" [{100 * self.ci[0]:.1f}, {100 * self.ci[1]:.1f}]"
        return f"{self.label} {body}"


def _score(record: ResultRecord, shots: Any) -> Score | None:
    if shots == "all" and record.macro_f1 is not None:
        return Score(record.model, model_label(record), "all", record.macro_f1, record.macro_f1_ci)
    for p in record.curve:
        if (
            isinstance(p, dict)
            and p.get("shots") == shots
            and isinstance(p.get("macro_f1_mean"), int | float)
        ):
            return Score(record.model, model_label(record), shots, float(p["macro_f1_mean"]), _ci(p))
    return None


def compare(a: Score, b: Score) -> str:
    """'ahead of' / 'behind' when the intervals are apart, else 'within noise of'."""
    diff = f"{100 * (a.value - b.value):+.1f} points"
    if a.ci and b.ci and (a.ci[0] > b.ci[1] or a.ci[1] < b.ci[0]):
        return f"{'ahead of' if a.value > b.value else 'behind'} {b.text()} ({diff}, intervals apart)"
    return f"within noise of {b.text()} ({diff}, intervals overlap)"


@dataclass
class Verdict:
    task: str
    protocol: str
    lines: list[str] = field(default_factory=list)
    caveat: str | None = None


def _test_size(records: list[ResultRecord]) -> int | None:
    sizes = [r.metrics.get("n") for r in records if isinstance(r.metrics.get("n"), int)]
    return min(sizes) if sizes else None


def _same_backbone_first(records: list[ResultRecord], backbone: str) -> ResultRecord | None:
    """The record on `backbone` when there is one (an architecture's own baseline), else the first."""
    return next((r for r in records if r.backbone == backbone), records[0] if records else None)


def verdicts(collection: Collection, tasks: list[str]) -> list[Verdict]:
    """Per task, for the first honest protocol that has a pretrained result (kNN, then linear, then
    fine-tuned): every pretrained model against ImageNet and random init, each on the same backbone when
    such a baseline exists. Every pretrained model is listed (best first): picking one "best" by its test
    score would be a selection on test."""
    out = []
    for task in tasks:
        recs = [r for r in collection.records if task_key(r.task) == task_key(task)]
        for protocol in HONEST_PROTOCOLS:
            group = [r for r in recs if r.protocol == protocol]
            pretrained = [r for r in group if r.init.lower() not in BASELINE_INITS and r.macro_f1 is not None]
            if not pretrained:
                continue
            v = Verdict(task, protocol)
            for model in sorted(pretrained, key=lambda r: -(r.macro_f1 or 0.0)):
                v.lines += _verdict_lines(collection, group, model, protocol)
            n = _test_size(group)
            if n is not None and n < SMALL_TEST:
                v.caveat = (
                    f"The test split has {n} images: one image moves macro-F1 by several points, so read the "
                    "intervals, not the means."
                )
            out.append(v)
            break
    return out


def _verdict_lines(
    collection: Collection, group: list[ResultRecord], model: ResultRecord, protocol: str
) -> list[str]:
    baselines = {
        b: _same_backbone_first([r for r in group if r.init.lower() == b], model.backbone)
        for b in ("imagenet", "random")
    }
    shot_sets = [
        {p.get("shots") for p in r.curve if isinstance(p, dict)}
        for r in [model, *[b for b in baselines.values() if b is not None]]
    ]
    common = set.intersection(*shot_sets) - {"all"} if shot_sets else set()
    few = min((s for s in common if isinstance(s, int)), default=None)
    lines = []
    for shots in [few, "all"] if few is not None else ["all"]:
        mine = _score(model, shots)
        if mine is None:
            continue
        plural = "image" if shots == 1 else "images"
        where = "with all labels" if shots == "all" else f"at {shots} labelled {plural} per class"
        parts = []
        for name, rec in baselines.items():
            other = _score(rec, shots) if rec is not None else None
            shown = INIT_LABELS[name]
            notes = [u for u in collection.unavailable if str(u.get("init", "")).lower() == name]
            missing = next(
                (u for u in notes if u.get("backbone") == model.backbone), notes[0] if notes else None
            )
            if other:
                parts.append(compare(mine, other))
            elif missing:
                parts.append(f"{shown} unavailable here ({missing['reason']})")
            else:
                parts.append(f"no {shown} result to compare")
        lines.append(f"{PROTOCOL_LABELS[protocol]} {where}: {mine.text()}; " + "; ".join(parts) + ".")
    return lines


@dataclass
class ClassTable:
    """Per-class F1 and recall (x 100) of every result of one task."""

    task: str
    classes: list[str]
    rows: list[tuple[str, str, list[tuple[float | None, float | None]]]]  # (protocol label, model, cells)


def class_tables(collection: Collection, tasks: list[str]) -> list[ClassTable]:
    out = []
    for task in tasks:
        recs = _task_records(collection, task)
        if not recs:
            continue
        classes = list(recs[0].payload.get("class_names") or [])
        rows = []
        for r in recs:
            f1 = r.metrics.get("per_class_f1") or {}
            rec = r.metrics.get("per_class_recall") or {}
            cells = [(_num(f1.get(c)), _num(rec.get(c))) for c in classes]
            rows.append((PROTOCOL_LABELS.get(r.protocol, r.protocol), model_label(r), cells))
        out.append(ClassTable(task, classes, rows))
    return out


@dataclass
class Confusion:
    task: str
    protocol: str
    model: str
    classes: list[str]
    counts: list[list[int]]


def confusions(collection: Collection, tasks: list[str]) -> list[Confusion]:
    """Confusion matrices (rows true, columns predicted) of every result that stores one."""
    out = []
    for task in tasks:
        for r in _task_records(collection, task):
            cm = r.metrics.get("confusion")
            classes = list(r.payload.get("class_names") or [])
            if isinstance(cm, list) and len(cm) == len(classes) and all(isinstance(row, list) for row in cm):
                label = PROTOCOL_LABELS.get(r.protocol, r.protocol)
                out.append(
                    Confusion(task, label, model_label(r), classes, [[int(v) for v in row] for row in cm])
                )
    return out


@dataclass
class SkinTypeTable:
    """Macro-F1 (x 100) per Fitzpatrick skin type, with the number of test images of each type."""

    task: str
    types: list[str]
    counts: dict[str, int]
    rows: list[tuple[str, str, list[float | None]]]


def _skin_key(t: str) -> tuple[int, str]:
    return (0, f"{int(t):03d}") if t.lstrip("-").isdigit() else (1, t)


def skin_type_tables(collection: Collection, tasks: list[str]) -> list[SkinTypeTable]:
    out = []
    for task in tasks:
        recs = [
            r for r in _task_records(collection, task) if isinstance(r.payload.get("per_skin_type"), dict)
        ]
        if not recs:
            continue
        types = sorted({t for r in recs for t in r.payload["per_skin_type"]}, key=_skin_key)
        counts: dict[str, int] = {}
        rows = []
        for r in recs:
            per = r.payload["per_skin_type"]
            cells = []
            for t in types:
                rep = per.get(t) or {}
                cells.append(_num(rep.get("macro_f1")))
                if isinstance(rep.get("n"), int):
                    counts[t] = rep["n"]
            rows.append((PROTOCOL_LABELS.get(r.protocol, r.protocol), model_label(r), cells))
        out.append(SkinTypeTable(task, types, counts, rows))
    return out


@dataclass
class DataSummary:
    """Images per class and split, and the manifests the results of one task came from."""

    task: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    manifests: list[str]
    test_images: int | None


def data_summaries(collection: Collection, tasks: list[str]) -> list[DataSummary]:
    out = []
    for task in tasks:
        recs = _task_records(collection, task)
        with_data = [r for r in recs if isinstance(r.payload.get("data"), dict)]
        classes = list(recs[0].payload.get("class_names") or []) if recs else []
        counts = dict(with_data[0].payload["data"].get("class_counts") or {}) if with_data else {}
        manifests = sorted(
            {str(r.payload["data"].get("manifest")) for r in with_data if r.payload["data"].get("manifest")}
        )
        out.append(DataSummary(task, classes, counts, manifests, _test_size(recs)))
    return out


@dataclass
class PublishedRow:
    protocol: str
    init: str
    published: dict[str, float]
    yours: dict[str, Score | None]


def published_comparison(collection: Collection, tasks: list[str]) -> list[PublishedRow]:
    """Gröger et al. Table 2 beside the user's best result of the same protocol and init, for the paper's
    tasks among `tasks` (empty when none of them is present)."""
    paper_tasks = [t for t in tasks if task_key(t) in {task_key(p) for p in PAPER_TASKS}]
    if not paper_tasks:
        return []
    rows = []
    for (protocol, init), values in PUBLISHED_TABLE2.items():
        yours: dict[str, Score | None] = {}
        for task in paper_tasks:
            mine = [
                r
                for r in collection.records
                if task_key(r.task) == task_key(task)
                and r.protocol == protocol
                and (r.init.lower() == init or protocol == "stratified")
                and r.macro_f1 is not None
            ]
            best = max(mine, key=lambda r: r.macro_f1 or 0.0) if mine else None
            yours[task] = _score(best, "all") if best else None
        published = {t: values[p] for t in paper_tasks for p in values if task_key(p) == task_key(t)}
        rows.append(PublishedRow(protocol, init, published, yours))
    return rows


@dataclass
class AblationGrid:
    """Method x backbone (Gröger et al. §4): macro-F1 of each init on each backbone, one protocol, one task."""

    task: str
    protocol: str
    backbones: list[str]
    rows: list[tuple[str, list[Score | None]]]  # (init label, one cell per backbone)


def ablation_grids(collection: Collection, tasks: list[str]) -> list[AblationGrid]:
    """A grid per task and honest protocol where some pretraining method has results on two or more
    backbones; ImageNet and random rows give each architecture's own baseline. A cell holds the best
    result of that (init, backbone) pair with all labels."""
    from dermctl.report.tables import SECTIONS

    order = SECTIONS[0][2]
    out = []
    for task in tasks:
        for protocol in HONEST_PROTOCOLS:
            recs = [
                r
                for r in collection.records
                if task_key(r.task) == task_key(task) and r.protocol == protocol and r.macro_f1 is not None
            ]
            by_init: dict[str, dict[str, list[ResultRecord]]] = {}
            for r in recs:
                by_init.setdefault(r.init.lower(), {}).setdefault(r.backbone or "?", []).append(r)
            if not any(len(b) > 1 for i, b in by_init.items() if i not in BASELINE_INITS):
                continue
            backbones = sorted(
                {b for per in by_init.values() for b in per}, key=lambda b: (not b.startswith("resnet"), b)
            )
            rows = []
            for init in sorted(by_init, key=lambda i: (order.index(i) if i in order else len(order), i)):
                cells: list[Score | None] = []
                for b in backbones:
                    group = by_init[init].get(b, [])
                    best = max(group, key=lambda r: r.macro_f1 or 0.0) if group else None
                    cells.append(_score(best, "all") if best else None)
                rows.append((INIT_LABELS.get(init, init), cells))
            out.append(AblationGrid(task, protocol, backbones, rows))
    return out


def _task_records(collection: Collection, task: str) -> list[ResultRecord]:
    recs = [r for r in collection.records if task_key(r.task) == task_key(task)]
    order = list(PROTOCOL_LABELS)
    return sorted(
        recs, key=lambda r: (order.index(r.protocol) if r.protocol in order else len(order), r.init, r.model)
    )


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


__all__ = [
    "PUBLISHED_TABLE2",
    "ablation_grids",
    "SMALL_TEST",
    "class_tables",
    "confusions",
    "data_summaries",
    "published_comparison",
    "skin_type_tables",
    "verdicts",
]
