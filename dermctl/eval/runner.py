"""The frozen-feature protocols as commands: one runner for `dermctl knn` and `dermctl probe`, honest or as
published, and the stratified baseline; one result schema (`dermctl.results`) for all of them.

Every protocol goes the same way: find and validate the task (every class in train and test), load each
model's embeddings and check the shot counts before any model is evaluated, then per model run the
protocol's rule on (train, val, test) features, compute the headline metrics with bootstrap intervals and
per-skin-type reports, and write results/<protocol>/<model>/<task>.json. The rules live beside it:
`knn` (DINO's weighted kNN), `probe` (the linear probe), `published` (the study authors' optimistic
variants), `baselines` (stratified random guessing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dermctl.data.manifest import Manifest, fill_hashes, find_task, read_manifest, validate_task
from dermctl.errors import DataError, UsageError
from dermctl.eval.baselines import DEFAULT_DRAWS, STRATIFIED, stratified_baseline
from dermctl.eval.embeddings import SKIN_TYPE_COLUMN, TaskData, load_task_embeddings, models_with_embeddings
from dermctl.eval.fewshot import ALL, Shots, check_shots
from dermctl.eval.knn import DEFAULT_K, DEFAULT_T, check_rule, knn_fewshot
from dermctl.eval.probe import LAM_GRID, probe_fewshot, split_groups
from dermctl.eval.published import (
    KNN_PROTOCOL,
    LINEAR_PROTOCOL,
    PAPER_K_GRID,
    check_protocol,
    knn_paper,
    linear_paper,
)
from dermctl.provenance import sha256_file
from dermctl.results import build_result, write_result
from dermctl.runtime.device import computing_on, resolve_device
from dermctl.workspace import Workspace


@dataclass
class EvalSummary:
    """One written result, for the command line's table."""

    model: str
    task: str
    path: str
    macro_f1: float
    macro_f1_ci: list[float]
    curve: list[dict[str, Any]]


@dataclass
class ProtocolRun:
    """What a protocol's rule hands the runner for one model: its few-shot curve, the headline test
    predictions and class scores, the config to record, and optionally one line for the log."""

    curve: list[dict[str, Any]]
    pred: np.ndarray
    scores: np.ndarray
    config: dict[str, Any]
    note: str | None = None


def resolve_models(workspace: Workspace, task: str, models: Sequence[str] | None) -> list[str]:
    """The given model ids, or every model with embeddings of `task`."""
    if models:
        return list(dict.fromkeys(models))
    found = models_with_embeddings(workspace, task)
    if not found:
        raise DataError(
            f"{workspace.embeddings}: no embeddings of task {task!r} (run `dermctl embed --model ... --task {task}`)"
        )
    return found


def record_result(
    workspace: Workspace,
    protocol: str,
    d: TaskData,
    task: str,
    run: ProtocolRun,
    *,
    bootstrap: int,
    seed: int,
    force: bool,
) -> EvalSummary:
    """Write results/<protocol>/<model>/<task>.json for one model's evaluation. The `all` point of the
    curve (one repeat) takes the bootstrap CI over test images. The file also records the task's data
    (manifest, class counts per split) and the headline test predictions per image (so a confusion
    matrix can be redrawn from the file)."""
    metrics, per_skin = d.reports(run.pred, run.scores, bootstrap, seed)
    curve = run.curve
    for point in curve:
        if point["shots"] == ALL:
            point["macro_f1_ci"] = metrics["macro_f1_ci"]
    attrs = d.embeddings.attrs
    payload = build_result(
        protocol,
        d.model_id,
        str(attrs.get("init", "")),
        str(attrs.get("backbone", "")),
        task,
        d.class_names,
        d.test_sha256,
        metrics,
        run.config,
        d.inputs(),
        curve,
        per_skin,
    )
    payload["data"] = d.data_summary()
    payload["predictions"] = d.test_predictions(run.pred)
    path = write_result(workspace.result_path(protocol, d.model_id, task), payload, force=force)
    return EvalSummary(d.model_id, task, str(path), metrics["macro_f1"], metrics["macro_f1_ci"], curve)


def run_protocol(
    workspace: Workspace,
    task: str,
    *,
    protocol: str,
    models: Sequence[str] | None,
    shots: Sequence[Shots],
    rule: Callable[[TaskData], ProtocolRun],
    bootstrap: int,
    seed: int,
    force: bool,
    log: Callable[[str], None] | None = None,
    skip: Sequence[str] = (),
    first: Callable[[Path], EvalSummary] | None = None,
    device: str = "auto",
) -> list[EvalSummary]:
    """Validate the task and every model's inputs first, then run `rule` per model and record it.
    Model ids in `skip` are not loaded; `first` (the stratified baseline) runs on the task's manifest
    after the checks and before the models. The rules compute on `device` (auto | cpu | cuda | cuda:N,
    `dermctl.runtime.device`), resolved before anything is read."""
    dev = resolve_device(device)
    manifest_path = find_task(workspace.manifests, task)
    validate_task(read_manifest(manifest_path))  # labels: every class in train and test, before any work
    task_name = manifest_path.stem
    ids = [m for m in resolve_models(workspace, task_name, models) if m not in skip]
    data = [load_task_embeddings(workspace, m, task_name, manifest_path) for m in ids]
    for d in data:
        check_shots(shots, d.split("train")[1], d.class_names)
    out = [] if first is None else [first(manifest_path)]
    for d in data:
        with computing_on(dev):
            run = rule(d)
        if log is not None and run.note:
            log(f"{d.model_id}: {run.note}")
        out.append(
            record_result(workspace, protocol, d, task_name, run, bootstrap=bootstrap, seed=seed, force=force)
        )
    return out


def _check_repeats(repeats: int) -> None:
    if repeats < 1:
        raise UsageError(f"--repeats: {repeats} must be at least 1")


def evaluate_knn(
    workspace: Workspace,
    task: str,
    *,
    models: Sequence[str] | None = None,
    shots: Sequence[Shots] = (1, 5, 10, ALL),
    repeats: int = 10,
    k: int | str = DEFAULT_K,
    temperature: float = DEFAULT_T,
    vote: str = "weighted",
    seed: int = 0,
    bootstrap: int = 1000,
    force: bool = False,
    on_step: Callable[[], None] | None = None,
    protocol: str = "honest",
    device: str = "auto",
) -> list[EvalSummary]:
    """`dermctl knn`: few-shot kNN curves and headline metrics -> results/knn/<model>/<task>.json.

    `protocol="paper"` runs the study authors' optimistic rule instead (`dermctl.eval.published`: uniform
    votes, k chosen on test F1, the maximum over repeats) -> results/knn-paper/<model>/<task>.json; k,
    temperature and vote do not apply there."""
    check_protocol(protocol)
    check_rule(DEFAULT_K if k == "auto" else int(k), temperature, vote)
    _check_repeats(repeats)

    def honest(d: TaskData) -> ProtocolRun:
        (xtr, ytr), (xva, yva), (xte, yte) = d.split("train"), d.split("val"), d.split("test")
        res = knn_fewshot(
            xtr, ytr, xte, yte, d.n_classes, shots, repeats, k, temperature, vote, seed, xva, yva,
            d.class_names, on_step,
        )  # fmt: skip
        config = {
            "shots": list(shots),
            "repeats": repeats,
            "k": k,
            "k_headline": res.k,
            "temperature": temperature,
            "vote": vote,
            "seed": seed,
            "bootstrap": bootstrap,
            "feature_rule": d.embeddings.attrs.get("feature_rule"),
        }
        return ProtocolRun(res.curve, res.pred, res.scores, config)

    def paper(d: TaskData) -> ProtocolRun:
        (xtr, ytr), (xte, yte) = d.split("train"), d.split("test")
        res = knn_paper(xtr, ytr, xte, yte, d.n_classes, shots, repeats, seed, d.class_names, on_step)
        config = {
            "shots": list(shots),
            "repeats": repeats,
            "seed": seed,
            "bootstrap": bootstrap,
            "vote": "majority",
            "metric": "cosine",
            "k_grid": list(PAPER_K_GRID),
            "k_chosen_on": "test",
            "k_headline": res.k,
            "summary": "macro_f1_max: the maximum over repeats (the authors' Figure 1)",
            "feature_rule": d.embeddings.attrs.get("feature_rule"),
        }
        return ProtocolRun(res.curve, res.pred, res.scores, config)

    return run_protocol(
        workspace,
        task,
        protocol="knn" if protocol == "honest" else KNN_PROTOCOL,
        models=models,
        shots=shots,
        rule=honest if protocol == "honest" else paper,
        bootstrap=bootstrap,
        seed=seed,
        force=force,
        device=device,
    )


def evaluate_probe(
    workspace: Workspace,
    task: str,
    *,
    models: Sequence[str] | None = None,
    shots: Sequence[Shots] = (ALL,),
    repeats: int = 10,
    seed: int = 0,
    bootstrap: int = 1000,
    force: bool = False,
    on_step: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
    protocol: str = "honest",
    device: str = "auto",
) -> list[EvalSummary]:
    """`dermctl probe`: linear probe (plus few-shot curve) -> results/linear/<model>/<task>.json.

    The model id "stratified" runs the stratified random baseline instead (results/stratified/...).
    `log` receives one line per model saying which lam the headline probe used and how it was chosen.
    `protocol="paper"`: scikit-learn's untuned `LogisticRegression()` on the raw features, the maximum
    over repeats per shot count (`dermctl.eval.published`) -> results/linear-paper/<model>/<task>.json."""
    check_protocol(protocol)
    _check_repeats(repeats)
    if models and STRATIFIED in models and protocol == "paper":
        raise UsageError(
            "--model stratified: the stratified baseline has one protocol; run it without --protocol paper"
        )

    def honest(d: TaskData) -> ProtocolRun:
        (xtr, ytr), (xva, yva), (xte, yte) = d.split("train"), d.split("val"), d.split("test")
        res = probe_fewshot(
            xtr, ytr, xte, yte, d.n_classes, shots, repeats, seed, xva, yva, d.class_names, on_step,
            train_groups=split_groups(d, "train"), val_groups=split_groups(d, "val"),
        )  # fmt: skip
        config = {
            "shots": list(shots),
            "repeats": repeats,
            "seed": seed,
            "bootstrap": bootstrap,
            "standardise": True,
            "solver": "lbfgs",
            "lam_grid": list(LAM_GRID),
            "lam": res.probe.lam,
            # binary: the two-vector softmax equals sklearn's binomial model at twice the multinomial C
            "sklearn_C": (2.0 if d.n_classes == 2 else 1.0) / (res.probe.lam * max(1, ytr.size)),
            # how lam was chosen: val | cv (grouped k-fold over train+val) | default (C = 1)
            "lam_selection": res.probe.lam_source,
            "lam_note": res.probe.describe(),
            "cv_folds": res.probe.cv_folds,
            "cv_macro_f1": res.probe.cv_macro_f1,
            "fit_on": "train",
            "val_macro_f1": res.probe.val_macro_f1,
            "search": res.probe.path,
            "feature_rule": d.embeddings.attrs.get("feature_rule"),
        }
        return ProtocolRun(res.curve, res.pred, res.scores, config, note=res.probe.describe())

    def paper(d: TaskData) -> ProtocolRun:
        (xtr, ytr), (xte, yte) = d.split("train"), d.split("test")
        res = linear_paper(xtr, ytr, xte, yte, d.n_classes, shots, repeats, seed, d.class_names, on_step)
        config = {
            "shots": list(shots),
            "repeats": repeats,
            "seed": seed,
            "bootstrap": bootstrap,
            "classifier": "sklearn.linear_model.LogisticRegression() (defaults, untuned)",
            "standardise": False,
            "summary": "macro_f1_max: the maximum over repeats",
            "feature_rule": d.embeddings.attrs.get("feature_rule"),
        }
        return ProtocolRun(res.curve, res.pred, res.scores, config)

    def stratified(manifest_path: Path) -> EvalSummary:
        return evaluate_stratified(workspace, manifest_path, seed=seed, force=force)

    return run_protocol(
        workspace,
        task,
        protocol="linear" if protocol == "honest" else LINEAR_PROTOCOL,
        models=models,
        shots=shots,
        rule=honest if protocol == "honest" else paper,
        bootstrap=bootstrap,
        seed=seed,
        force=force,
        log=log,
        skip=(STRATIFIED,),
        first=stratified if models and STRATIFIED in models else None,
        device=device,
    )


def evaluate_stratified(
    workspace: Workspace,
    manifest_path: Path,
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    force: bool = False,
) -> EvalSummary:
    """The stratified baseline of a task from its manifest alone -> results/stratified/stratified/<task>.json."""
    manifest = read_manifest(manifest_path)
    classes = manifest.classes
    if not classes:
        raise DataError(f"{manifest_path}: no labels, not a task")
    index = {c: i for i, c in enumerate(classes)}
    train = [r for r in manifest.rows if r.split == "train" and r.label]
    test = [r for r in manifest.rows if r.split == "test" and r.label]
    if not train or not test:
        raise DataError(f"{manifest_path}: a task needs labelled train and test images")
    fill_hashes(Manifest(manifest.name, test, manifest.path))
    groups = None
    if SKIN_TYPE_COLUMN in manifest.extra_columns:
        groups = [r.extras.get(SKIN_TYPE_COLUMN, "") for r in test]
    res = stratified_baseline(
        [index[r.label] for r in train],
        [index[r.label] for r in test],
        len(classes),
        classes,
        draws,
        seed,
        groups,
    )
    config = {"draws": draws, "seed": seed, "class_frequencies": res["class_frequencies"]}
    inputs = {"manifest": sha256_file(manifest_path)}
    payload = build_result(
        "stratified",
        STRATIFIED,
        STRATIFIED,
        "",
        manifest.name,
        classes,
        [r.sha256 for r in test],
        res["metrics"],
        config,
        inputs,
        res["curve"],
        res["per_group"],
    )
    path = write_result(workspace.result_path("stratified", STRATIFIED, manifest.name), payload, force=force)
    m = res["metrics"]
    return EvalSummary(STRATIFIED, manifest.name, str(path), m["macro_f1"], m["macro_f1_ci"], res["curve"])
