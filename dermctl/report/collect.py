"""Reading what the evaluation commands wrote: result JSON files and the status of pretraining runs.

Results live at results/<protocol>/<model>/<task>.json (schema "dermctl.result/1"); pretraining runs at
runs/<name>/run.json ({"status": running | finished | early_stopped | diverged | collapsed | interrupted}).
The report reads these files only and never changes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermctl.errors import DataError
from dermctl.results import SCHEMA, UNAVAILABLE_DIR
from dermctl.workspace import read_json

REQUIRED = ("protocol", "model", "task")


@dataclass
class ResultRecord:
    """One result file, with the fields the report uses pulled out."""

    path: Path
    protocol: str
    model: str
    init: str
    backbone: str
    task: str
    test_split_sha256: str | None
    metrics: dict[str, Any]
    curve: list[dict[str, Any]]
    payload: dict[str, Any]
    run: str | None = None  # the pretraining run behind the model, when known
    run_status: str | None = None

    @property
    def macro_f1(self) -> float | None:
        value = self.metrics.get("macro_f1")
        return float(value) if isinstance(value, int | float) else None

    @property
    def macro_f1_ci(self) -> tuple[float, float] | None:
        ci = self.metrics.get("macro_f1_ci")
        if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(v, int | float) for v in ci):
            return float(ci[0]), float(ci[1])
        return None


@dataclass
class Collection:
    """Every result found, and the folders they came from."""

    results_dir: Path
    records: list[ResultRecord] = field(default_factory=list)
    runs_dir: Path | None = None
    unavailable: list[dict[str, Any]] = field(default_factory=list)  # models that could not be had here

    def tasks(self) -> list[str]:
        return sorted({r.task for r in self.records})

    def for_protocol(self, *protocols: str) -> list[ResultRecord]:
        return [r for r in self.records if r.protocol in protocols]


def find_result_files(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Result JSON files under `results_dir` (temporary and hidden files skipped), sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        raise DataError(
            f"--results: {root} is not a folder (expected results/<protocol>/<model>/<task>.json)"
        )
    return sorted(
        p
        for p in root.rglob("*.json")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.relative_to(root).parts[0] != UNAVAILABLE_DIR
    )


def find_unavailable(results_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The models noted as unavailable (`results/unavailable/<model>.json`, written by `embed`); a
    damaged note is skipped (it only adds a row saying "unavailable")."""
    out = []
    for p in sorted((Path(results_dir) / UNAVAILABLE_DIR).glob("*.json")):
        try:
            data = read_json(p)
        except DataError:
            continue
        if isinstance(data, dict) and data.get("model") and data.get("reason"):
            out.append(data)
    return out


def load_result(path: Path) -> ResultRecord:
    """Parse one result file; a file that is not a dermctl result is a DataError naming it."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a dermctl result (expected a JSON object)")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise DataError(f"{path}: schema {schema!r} is not {SCHEMA!r}")
    missing = [k for k in REQUIRED if not data.get(k)]
    if missing:
        raise DataError(f"{path}: result lacks {', '.join(missing)}")
    metrics = data.get("metrics") or {}
    curve = data.get("curve") or []
    if not isinstance(metrics, dict) or not isinstance(curve, list):
        raise DataError(f"{path}: 'metrics' must be an object and 'curve' a list")
    protocol = str(data["protocol"])
    init = str(data.get("init") or ("stratified" if protocol == "stratified" else data["model"]))
    return ResultRecord(
        path=path,
        protocol=protocol,
        model=str(data["model"]),
        init=init,
        backbone=str(data.get("backbone") or ""),
        task=str(data["task"]),
        test_split_sha256=data.get("test_split_sha256") or None,
        metrics=metrics,
        curve=curve,
        payload=data,
    )


def run_statuses(runs_dir: str | os.PathLike[str] | None) -> dict[str, tuple[str, Path]]:
    """{run name: (status, run.json path)} of the pretraining runs under `runs_dir` (empty when absent).

    A run is known by its folder name and by the `name` in its run.json."""
    out: dict[str, tuple[str, Path]] = {}
    if runs_dir is None or not Path(runs_dir).is_dir():
        return out
    for run_json in sorted(Path(runs_dir).glob("*/run.json")):
        try:
            data = read_json(run_json)
        except DataError:
            continue  # a run being written or damaged must not stop the report; it is simply not flagged
        if not isinstance(data, dict):
            continue
        status = str(data.get("status") or "")
        out[run_json.parent.name] = (status, run_json)
        if isinstance(data.get("name"), str) and data["name"]:
            out.setdefault(data["name"], (status, run_json))
    return out


def _run_of(record: ResultRecord) -> str | None:
    """The pretraining run a result's model came from: explicit fields first, else the model id."""
    p = record.payload
    for candidate in (p.get("run"), (p.get("config") or {}).get("run"), (p.get("config") or {}).get("model")):
        if isinstance(candidate, str) and candidate:
            return Path(candidate).name
    return record.model


def collect(
    results_dir: str | os.PathLike[str],
    runs_dir: str | os.PathLike[str] | None = None,
    tasks: list[str] | None = None,
) -> Collection:
    """Read every result under `results_dir` (optionally only `tasks`), attach pretraining run status and
    check that results for the same task were measured on the same test split.

    Raises DataError when there is no result at all, or when two results for one task carry different
    `test_split_sha256` values (numbers on different test sets must not share a column)."""
    files = find_result_files(results_dir)
    if not files:
        raise DataError(
            f"--results: no result files in {results_dir} (expected results/<protocol>/<model>/<task>.json; "
            "run `dermctl knn`, `probe` or `finetune` first)"
        )
    records = [load_result(f) for f in files]
    if tasks:
        known = {task_key(r.task): r.task for r in records}
        unknown = [t for t in tasks if task_key(t) not in known]
        if unknown:  # a typo must not overwrite a good report with an empty one
            raise DataError(
                f"--tasks: no results for task {unknown[0]!r} in {results_dir} "
                f"(tasks with results: {', '.join(sorted(set(known.values())))})"
            )
        wanted = {task_key(t) for t in tasks}
        records = [r for r in records if task_key(r.task) in wanted]
    statuses = run_statuses(runs_dir)
    for r in records:
        if r.protocol in ("stratified",) or r.init in ("imagenet", "random", "stratified"):
            continue
        name = _run_of(r)
        if name in statuses:
            r.run, r.run_status = name, statuses[name][0]
        elif r.model in statuses:
            r.run, r.run_status = r.model, statuses[r.model][0]
    check_test_splits(records)
    have = {r.model for r in records}
    return Collection(
        results_dir=Path(results_dir),
        records=records,
        runs_dir=Path(runs_dir) if runs_dir else None,
        unavailable=[u for u in find_unavailable(results_dir) if u["model"] not in have],
    )


def check_test_splits(records: list[ResultRecord]) -> None:
    """Refuse to compare results of one task whose test splits differ (DataError naming both files)."""
    seen: dict[str, ResultRecord] = {}
    for r in records:
        if not r.test_split_sha256:
            continue
        key = task_key(r.task)
        first = seen.setdefault(key, r)
        if first.test_split_sha256 != r.test_split_sha256:
            raise DataError(
                f"{first.path} and {r.path}: task {r.task!r} was tested on different test splits "
                f"(test_split_sha256 {first.test_split_sha256[:12]}... vs {r.test_split_sha256[:12]}...); "
                "re-run one of them on the same manifest or report them separately with --tasks/--results"
            )


def task_key(name: str) -> str:
    """Case- and punctuation-insensitive task identity (`PAD-UFES-20` == `pad_ufes_20`)."""
    return "".join(ch for ch in name.lower() if ch.isalnum())
