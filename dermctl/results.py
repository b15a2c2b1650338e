"""Result files: `results/<protocol>/<model_id>/<task>.json`, one per (protocol, model, task).

Schema "dermctl.result/1"::

    {"schema": "dermctl.result/1",
     "protocol": knn | linear | finetune | stratified | knn-paper | linear-paper (the authors' optimistic
                 evaluation, `dermctl.eval.published`; curve points add "macro_f1_max"),
     "model": model_id, "init": method name | imagenet | random | stratified, "backbone": timm name,
     "task": task name, "class_names": [...], "test_split_sha256": hash of the sorted test-image hashes,
     "metrics": classification_report of the headline evaluation,
     "per_skin_type": {"1": report, ...}            (only for tasks with a skin_type column),
     "curve": [{"shots", "repeats", "macro_f1_mean", "macro_f1_std", "macro_f1_ci", "values", "k"?}],
     "config": {...}, "inputs": {"embeddings", "manifest", "checkpoint": sha256},
     "provenance": dermctl.provenance.provenance()}

`report` reads these files only, so every number in a table can be traced to one file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dermctl.errors import ConflictError, DataError
from dermctl.workspace import atomic_write_json, read_json

SCHEMA = "dermctl.result/1"
PROTOCOLS = ("knn", "linear", "finetune", "stratified", "knn-paper", "linear-paper")
REQUIRED_KEYS = (
    "schema",
    "protocol",
    "model",
    "init",
    "backbone",
    "task",
    "class_names",
    "test_split_sha256",
    "metrics",
    "config",
    "inputs",
    "provenance",
)
METRIC_KEYS = (
    "macro_f1",
    "macro_f1_ci",
    "balanced_accuracy",
    "balanced_accuracy_ci",
    "per_class_f1",
    "auroc_ovr",
    "n",
)
CURVE_KEYS = ("shots", "repeats", "macro_f1_mean", "macro_f1_std", "macro_f1_ci", "values")
# Keys that do not change what a result says; two results differing only here are the same result.
_VOLATILE = ("provenance",)


UNAVAILABLE_DIR = "unavailable"
UNAVAILABLE_SCHEMA = "dermctl.unavailable/1"


def unavailable_path(results: Path, model_id: str) -> Path:
    """`results/unavailable/<model_id>.json`: a model that could not be had here, and why."""
    return results / UNAVAILABLE_DIR / f"{model_id}.json"


def record_unavailable(
    results: Path, model_id: str, init: str, backbone: str, reason: str, tasks: Sequence[str]
) -> Path:
    """Note that `model_id` could not be evaluated here (e.g. ImageNet weights offline), so the report
    shows its row as unavailable with the reason instead of leaving it out."""
    payload = {
        "schema": UNAVAILABLE_SCHEMA,
        "model": model_id,
        "init": init,
        "backbone": backbone,
        "reason": reason,
        "tasks": list(tasks),
    }
    return atomic_write_json(unavailable_path(results, model_id), payload)


def clear_unavailable(results: Path, model_id: str) -> None:
    """The model is available after all (embedded): its earlier note goes."""
    unavailable_path(results, model_id).unlink(missing_ok=True)


def test_split_hash(sha256s: Sequence[str]) -> str:
    """SHA-256 of the sorted test-image hashes joined by newlines: equal test sets give equal hashes
    whatever their order, so results of different models can be checked to share one test split."""
    return hashlib.sha256("\n".join(sorted(str(s) for s in sha256s)).encode("utf-8")).hexdigest()


test_split_hash.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite its name


def validate_result(payload: Any, where: str = "result") -> dict[str, Any]:
    """Check the schema; DataError naming `where` and the first problem."""
    if not isinstance(payload, dict):
        raise DataError(f"{where}: a result must be a JSON object")
    if payload.get("schema") != SCHEMA:
        raise DataError(f"{where}: schema is {payload.get('schema')!r}, expected {SCHEMA!r}")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise DataError(f"{where}: result lacks key(s) {', '.join(missing)}")
    if payload["protocol"] not in PROTOCOLS:
        raise DataError(f"{where}: protocol {payload['protocol']!r} is not one of {', '.join(PROTOCOLS)}")
    _check_report(payload["metrics"], f"{where}: metrics")
    for group, report in (payload.get("per_skin_type") or {}).items():
        _check_report(report, f"{where}: per_skin_type[{group}]")
    curve = payload.get("curve")
    if curve is not None:
        if not isinstance(curve, list):
            raise DataError(f"{where}: curve must be a list of points")
        for i, point in enumerate(curve):
            lacking = [k for k in CURVE_KEYS if not isinstance(point, dict) or k not in point]
            if lacking:
                raise DataError(f"{where}: curve[{i}] lacks key(s) {', '.join(lacking)}")
            if point["shots"] != "all" and not (isinstance(point["shots"], int) and point["shots"] >= 1):
                raise DataError(
                    f"{where}: curve[{i}].shots is {point['shots']!r}, expected a positive integer or 'all'"
                )
    return payload


def _check_report(report: Any, where: str) -> None:
    if not isinstance(report, dict):
        raise DataError(f"{where} must be an object")
    lacking = [k for k in METRIC_KEYS if k not in report]
    if lacking:
        raise DataError(f"{where} lacks key(s) {', '.join(lacking)}")
    f1 = report["macro_f1"]
    if not isinstance(f1, int | float) or not 0.0 <= float(f1) <= 1.0:
        raise DataError(f"{where}.macro_f1 is {f1!r}, expected a number in [0, 1]")


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a result file."""
    return validate_result(read_json(path), str(path))


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The same result: every value the old file holds (provenance aside) is equal in the new one. Keys
    only the new payload has (fields added by a later dermctl: predictions, data, recall, confusion) do
    not make a re-run of an unchanged evaluation a conflict; the file is then rewritten with them."""
    return _covers({k: v for k, v in old.items() if k not in _VOLATILE}, new)


def _covers(old: Any, new: Any) -> bool:
    if isinstance(old, dict) and isinstance(new, dict):
        return all(k in new and _covers(v, new[k]) for k, v in old.items())
    return bool(old == new)


def write_result(path: str | os.PathLike[str], payload: dict[str, Any], force: bool = False) -> Path:
    """Validate and write a result atomically. An existing file holding a *different* result (other
    metrics, config or inputs) is kept unless `force`; the same result is simply rewritten."""
    p = Path(path)
    import json

    # Round-trip through JSON so that tuples/numpy scalars compare equal to what is read back.
    payload = json.loads(json.dumps(payload, default=_jsonable))
    validate_result(payload, str(p))
    if p.exists() and not force:
        try:
            old = read_json(p)
        except DataError:
            old = None
        if not isinstance(old, dict) or not _same(old, payload):
            raise ConflictError(f"{p} exists and holds a different result; pass --force to replace it")
    atomic_write_json(p, payload)
    return p


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def build_result(
    protocol: str,
    model: str,
    init: str,
    backbone: str,
    task: str,
    class_names: Sequence[str],
    test_sha256s: Sequence[str],
    metrics: dict[str, Any],
    config: dict[str, Any],
    inputs: dict[str, str],
    curve: list[dict[str, Any]] | None = None,
    per_skin_type: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble a result payload with its provenance record."""
    from dermctl.provenance import provenance

    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "protocol": protocol,
        "model": model,
        "init": init,
        "backbone": backbone,
        "task": task,
        "class_names": list(class_names),
        "test_split_sha256": test_split_hash(test_sha256s),
        "metrics": metrics,
        "config": config,
        "inputs": inputs,
        "provenance": provenance(config, inputs),
    }
    if curve is not None:
        payload["curve"] = curve
    if per_skin_type:
        payload["per_skin_type"] = per_skin_type
    return payload
