"""Linear probe: multinomial logistic regression on frozen features (the "linear" rows of Table 2 of
Gröger et al.; DINO's linear evaluation protocol trains the same model by SGD).

Features are standardised with the training split's mean and standard deviation; the model is fitted by
full-batch L-BFGS in torch minimising mean cross-entropy + lam/2 * ||W||^2 (bias not penalised; in
scikit-learn's terms C = 1 / (lam * n_train) for K > 2 classes; for K = 2 the
softmax over two weight vectors equals sklearn's binomial model at C = 2 / (lam * n_train)).
lam is chosen on validation macro-F1 along a log grid,
from strong to weak regularisation, each fit warm-started from the previous one; the path stops once
validation macro-F1 has not improved for `patience` grid points. The chosen model is evaluated once on
the test split.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dermctl.data.manifest import find_task, read_manifest, validate_task
from dermctl.errors import UsageError
from dermctl.eval.baselines import STRATIFIED, evaluate_stratified
from dermctl.eval.embeddings import load_task_embeddings
from dermctl.eval.fewshot import ALL, Shots, check_shots, draw_support, repeats_for
from dermctl.eval.knn import EvalSummary, curve_point, record_result, resolve_models
from dermctl.eval.metrics import macro_f1
from dermctl.workspace import Workspace

# lam grid, strong to weak, half-decade steps: 1 ... 1e-6 (sklearn's C from 1e-4 to 1e2 for 10k images).
LAM_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(0, -6, 13))
# Convergence: max |gradient| of the mean loss, scikit-learn's lbfgs criterion (tol=1e-4) on the same scale.
TOLERANCE_GRAD = 1e-4
DEFAULT_MAX_ITER = 200


@dataclass
class LinearProbe:
    """A fitted probe: standardisation plus weights; `predict_proba` gives softmax scores."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # (d, n_classes)
    bias: np.ndarray  # (n_classes,)
    lam: float
    val_macro_f1: float | None = None
    path: list[dict[str, float]] = field(default_factory=list)  # [{lam, val_macro_f1}] of the search

    def logits(self, x: Any) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float32) - self.mean) / self.std
        return z @ self.weight + self.bias

    def predict_proba(self, x: Any) -> np.ndarray:
        lg = self.logits(x)
        lg = lg - lg.max(axis=1, keepdims=True)
        e = np.exp(lg)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, x: Any) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1).astype(np.int64)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature (constant features get std 1)."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = x.std(axis=0, dtype=np.float64).astype(np.float32)
    return mean, np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _fit(
    z: torch.Tensor,
    zt: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    lam: float,
    w: torch.Tensor,
    b: torch.Tensor,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean cross-entropy + lam/2 ||w||^2 from (w, b). The gradient is written by hand
    (softmax - one-hot) with a contiguous transposed copy `zt` of z: no autograd graph, and the
    backward product reads memory in order."""
    w = w.clone()
    b = b.clone()
    w.grad = torch.zeros_like(w)
    b.grad = torch.zeros_like(b)
    rows = torch.arange(y.shape[0], device=y.device)
    n = float(y.shape[0])
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=10,
        tolerance_grad=TOLERANCE_GRAD,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        logp = torch.log_softmax(z @ w + b, dim=1)
        loss = -logp[rows, y].mean() + 0.5 * lam * (w * w).sum()
        resid = logp.exp_()
        resid[rows, y] -= 1.0
        resid /= n
        torch.mm(zt, resid, out=w.grad)
        w.grad.add_(w, alpha=lam)
        b.grad.copy_(resid.sum(dim=0))
        return loss

    with torch.no_grad(), flush_denormals(), cpu_threads(z.device):
        opt.step(closure)
    return w, b


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[None]:
    """On the CPU, fit with at most half the cores: each L-BFGS step is a few skinny, memory-bound
    products, and torch's spinning OpenMP threads lose badly when cores are shared (measured on a busy
    2-core machine: 7-12 s with 2 threads, 1.6-2.5 s with 1, for 8,000 x 2,048 features)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) // 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while fitting: a saturated softmax produces denormal
    probabilities that make CPU matrix products ~10x slower (measured: 370 ms vs 28 ms per step)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def fit_probe(
    train_x: Any,
    train_y: Any,
    n_classes: int,
    val_x: Any | None = None,
    val_y: Any | None = None,
    lams: Sequence[float] = LAM_GRID,
    patience: int = 2,
    max_iter: int = DEFAULT_MAX_ITER,
) -> LinearProbe:
    """Fit the probe, choosing lam on validation macro-F1 (without validation data: lam = 1/n_train,
    scikit-learn's default C = 1)."""
    x = np.asarray(train_x, dtype=np.float32)
    ytr = np.asarray(train_y, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != ytr.size or ytr.size == 0:
        raise ValueError(f"train_x {x.shape} and train_y ({ytr.size}) do not match")
    mean, std = standardiser(x)
    dev = _device()
    z = torch.from_numpy((x - mean) / std).to(dev)
    zt = z.T.contiguous()
    y = torch.from_numpy(ytr).to(dev)
    w = torch.zeros(x.shape[1], n_classes, device=dev)
    b = torch.zeros(n_classes, device=dev)
    have_val = val_x is not None and val_y is not None and len(val_y) > 0
    if not have_val:
        lam = 1.0 / ytr.size
        w, b = _fit(z, zt, y, n_classes, lam, w, b, max_iter)
        return LinearProbe(mean, std, w.cpu().numpy(), b.cpu().numpy(), lam)
    zv = torch.from_numpy((np.asarray(val_x, dtype=np.float32) - mean) / std).to(dev)
    yv = np.asarray(val_y, dtype=np.int64)
    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    path: list[dict[str, float]] = []
    since_best = 0
    for lam in sorted(lams, reverse=True):
        w, b = _fit(z, zt, y, n_classes, float(lam), w, b, max_iter)
        f1 = macro_f1(yv, (zv @ w + b).argmax(dim=1).cpu().numpy(), n_classes)
        path.append({"lam": float(lam), "val_macro_f1": f1})
        if best is None or f1 > best[1]:
            best, since_best = (float(lam), f1, w, b), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    assert best is not None
    lam, f1, w, b = best
    return LinearProbe(mean, std, w.cpu().numpy(), b.cpu().numpy(), lam, f1, path)


@dataclass
class ProbeOutcome:
    """A few-shot probe curve plus the headline (full training split) probe and its test predictions."""

    curve: list[dict[str, Any]]
    probe: LinearProbe
    pred: np.ndarray
    scores: np.ndarray


def probe_fewshot(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    n_classes: int,
    shots: Sequence[Shots] = (ALL,),
    repeats: int = 10,
    seed: int = 0,
    val_x: Any | None = None,
    val_y: Any | None = None,
    class_names: Sequence[str] | None = None,
    on_step: Callable[[], None] | None = None,
) -> ProbeOutcome:
    """Probe on seeded stratified support sets per shot count (curve) and on the whole training split."""
    xtr = np.asarray(train_x, dtype=np.float32)
    ytr = np.asarray(train_y, dtype=np.int64)
    yte = np.asarray(test_y, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    check_shots(shots, ytr, names)
    if repeats < 1:
        raise UsageError(f"--repeats: {repeats} must be at least 1")
    full = fit_probe(xtr, ytr, n_classes, val_x, val_y)
    curve = []
    for s in shots:
        values = []
        for r in range(repeats_for(s, repeats)):
            if s == ALL:
                probe = full
            else:
                sup = draw_support(ytr, s, n_classes, seed, r)
                probe = fit_probe(xtr[sup], ytr[sup], n_classes, val_x, val_y)
            values.append(macro_f1(yte, probe.predict(test_x), n_classes))
            if on_step is not None:
                on_step()
        curve.append(curve_point(s, values, None))
    for point in curve:
        point.pop("k")
    return ProbeOutcome(curve=curve, probe=full, pred=full.predict(test_x), scores=full.predict_proba(test_x))


def evaluate_probe(
    workspace: Workspace,
    task: str,
    models: Sequence[str] | None = None,
    shots: Sequence[Shots] = (ALL,),
    repeats: int = 10,
    seed: int = 0,
    bootstrap: int = 1000,
    force: bool = False,
    on_step: Callable[[], None] | None = None,
) -> list[EvalSummary]:
    """`dermctl probe`: linear probe (plus few-shot curve) -> results/linear/<model>/<task>.json.

    The model id "stratified" runs the stratified random baseline instead (results/stratified/...)."""
    if repeats < 1:
        raise UsageError(f"--repeats: {repeats} must be at least 1")
    manifest_path = find_task(workspace.manifests, task)
    validate_task(read_manifest(manifest_path))  # labels: every class in train and test, before any work
    task_name = manifest_path.stem
    ids = resolve_models(workspace, task_name, models)
    data = [load_task_embeddings(workspace, m, task_name, manifest_path) for m in ids if m != STRATIFIED]
    for d in data:
        check_shots(shots, d.split("train")[1], d.class_names)
    out = []
    if STRATIFIED in ids:
        out.append(evaluate_stratified(workspace, manifest_path, seed=seed, force=force))
    for d in data:
        xtr, ytr = d.split("train")
        xva, yva = d.split("val")
        xte, yte = d.split("test")
        res = probe_fewshot(
            xtr, ytr, xte, yte, d.n_classes, shots, repeats, seed, xva, yva, d.class_names, on_step
        )
        metrics, per_skin = d.reports(res.pred, res.scores, bootstrap, seed)
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
            "val_macro_f1": res.probe.val_macro_f1,
            "search": res.probe.path,
            "feature_rule": d.embeddings.attrs.get("feature_rule"),
        }
        out.append(
            record_result(workspace, "linear", d, task_name, res.curve, metrics, per_skin, config, force)
        )
    return out
