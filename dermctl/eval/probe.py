"""Linear probe: multinomial logistic regression on frozen features (the "linear" rows of Table 2 of
Gröger et al.; DINO's linear evaluation protocol trains the same model by SGD).

Features are standardised with the training split's mean and standard deviation; the model is fitted by
full-batch L-BFGS in torch minimising mean cross-entropy + lam/2 * ||W||^2 (bias not penalised; in
scikit-learn's terms C = 1 / (lam * n_train) for K > 2 classes; for K = 2 the
softmax over two weight vectors equals sklearn's binomial model at C = 2 / (lam * n_train)).

lam is searched along a log grid from strong to weak regularisation, each fit warm-started from the
previous one; the path stops once the selection score has not improved for `patience` grid points.
Where the score comes from (`LinearProbe.lam_source`):

* "val": the val split has at least VAL_MIN_IMAGES (1,000) labelled images and at least
  VAL_MIN_PER_CLASS (50) of every class: lam maximises val macro-F1 of the probe fitted on train.
* "cv": otherwise (a small val split, or none): grouped, stratified CV_FOLDS(5)-fold cross-validation
  over train + val; rows sharing a manifest `group` (patient, lesion) stay in one fold, rows without a
  group are groups of their own. Each fold's probe is fitted on the other folds (features standardised
  with train + val statistics, which use no labels); lam maximises the macro-F1 of the pooled
  out-of-fold predictions (pooled: small classes make per-fold
  F1 noisy). A macro-F1 on ~100 val images has a standard error of ~4-5 points, larger than the
  differences between grid points, which is why a small val split chose badly.
* "default": neither is possible (a class in fewer than 2 groups of train + val): lam = 1 / n_train,
  scikit-learn's default C = 1.

The final probe is always fitted on the train split alone, standardised with train's statistics: the
same labelled images kNN and the few-shot probes use, and the same n as the CV fold models within a few
percent (5 folds over train + val with the default 85/15 val fraction train on 94 % of train's size).
Val (and CV over it) only chooses lam. The chosen model is evaluated once on the test split.
Few-shot support-set probes choose lam on the whole val split when there is one (it is larger than the
support, and CV over support + val would fit fold models on far more images than the support probe),
else they use the default lam = 1 / n_support (a support set is too small to split into folds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dermctl.errors import UsageError
from dermctl.eval.fewshot import ALL, Shots, check_shots, curve_point, draw_support, repeats_for
from dermctl.eval.metrics import macro_f1
from dermctl.runtime.device import compute_device

# lam grid, strong to weak, half-decade steps: 1 ... 1e-6 (sklearn's C from 1e-4 to 1e2 for 10k images).
LAM_GRID: tuple[float, ...] = tuple(float(x) for x in np.logspace(0, -6, 13))
# Convergence: max |gradient| of the mean loss, scikit-learn's lbfgs criterion (tol=1e-4) on the same scale.
TOLERANCE_GRAD = 1e-4
DEFAULT_MAX_ITER = 200
# Selection rule (module docstring): val alone only when it is large enough for its macro-F1 to rank
# grid points (SE about 0.5 / sqrt(n) ~ 1.6 points at 1,000 images); else grouped k-fold CV.
VAL_MIN_IMAGES = 1000
VAL_MIN_PER_CLASS = 50
CV_FOLDS = 5
SELECTIONS = ("auto", "val", "cv")


@dataclass
class LinearProbe:
    """A fitted probe: standardisation plus weights; `predict_proba` gives softmax scores."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray  # (d, n_classes)
    bias: np.ndarray  # (n_classes,)
    lam: float
    val_macro_f1: float | None = None
    path: list[dict[str, float]] = field(default_factory=list)  # [{lam, val_macro_f1 | cv_macro_f1}]
    lam_source: str = "val"  # val | cv | default (module docstring)
    cv_folds: int = 0
    cv_macro_f1: float | None = None  # pooled out-of-fold macro-F1 at the chosen lam
    cv_on: str = ""  # "train+val" | "train": the rows the CV folds were drawn from

    def describe(self) -> str:
        """One line: the lam used and how it was chosen (printed by `dermctl probe`, kept in results)."""
        how = {
            "val": f"chosen on val macro-F1 ({self.val_macro_f1:.3f})"
            if self.val_macro_f1 is not None
            else "",
            "cv": f"chosen by grouped {self.cv_folds}-fold CV on {self.cv_on} (out-of-fold macro-F1 "
            f"{self.cv_macro_f1:.3f})"
            if self.cv_macro_f1 is not None
            else "",
            "default": "= 1 / n_train, scikit-learn's default C = 1 (not chosen: too few labelled groups)",
        }[self.lam_source]
        return f"lam {self.lam:.3g} {how}".rstrip()

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
    *,
    train_groups: Any | None = None,
    val_groups: Any | None = None,
    selection: str = "auto",
    folds: int = CV_FOLDS,
    seed: int = 0,
) -> LinearProbe:
    """Fit the probe on train, choosing lam as the module docstring says. `selection`: "auto" (the rule),
    "val" (val macro-F1 whenever there is val data, else the default lam = 1 / n_train), "cv" (grouped
    CV over train + val). Groups: one key per row ("" or None = the row alone); rows sharing a key never
    straddle CV folds."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    x = np.asarray(train_x, dtype=np.float32)
    ytr = np.asarray(train_y, dtype=np.int64)
    if x.ndim != 2 or x.shape[0] != ytr.size or ytr.size == 0:
        raise ValueError(f"train_x {x.shape} and train_y ({ytr.size}) do not match")
    have_val = val_x is not None and val_y is not None and len(val_y) > 0
    xv = np.asarray(val_x, dtype=np.float32).reshape(-1, x.shape[1]) if have_val else x[:0]
    yv = np.asarray(val_y, dtype=np.int64) if have_val else ytr[:0]
    lam_path = sorted((float(v) for v in lams), reverse=True)
    if have_val and (selection == "val" or (selection == "auto" and val_is_large(yv, ytr))):
        return _select_on_val(x, ytr, xv, yv, n_classes, lam_path, patience, max_iter)
    if selection == "val":  # asked for val, none given: the documented default, not a CV
        return _at_default(x, ytr, n_classes, max_iter)
    xa = np.concatenate([x, xv])
    ya = np.concatenate([ytr, yv])
    ga = np.concatenate([group_keys(train_groups, ytr.size, "t"), group_keys(val_groups, yv.size, "v")])
    split = cv_folds(ya, ga, folds, seed)
    if split is None:
        return _at_default(x, ytr, n_classes, max_iter)
    path: list[dict[str, float]] = []
    lam, score = _search(lam_path, patience, _cv_scorer(xa, ya, split, n_classes, max_iter), path, "cv")
    w, b, mean, std = _fit_at(x, ytr, n_classes, [v for v in lam_path if v >= lam], max_iter)
    return LinearProbe(
        mean,
        std,
        w,
        b,
        lam,
        None,
        path,
        lam_source="cv",
        cv_folds=len(split),
        cv_macro_f1=score,
        cv_on="train+val" if have_val else "train",
    )


def _at_default(x: np.ndarray, y: np.ndarray, n_classes: int, max_iter: int) -> LinearProbe:
    lam = 1.0 / y.size  # scikit-learn's default C = 1
    w, b, mean, std = _fit_at(x, y, n_classes, [lam], max_iter)
    return LinearProbe(mean, std, w, b, lam, lam_source="default")


def val_is_large(val_y: np.ndarray, train_y: np.ndarray) -> bool:
    """The selection rule: val alone decides when it has >= VAL_MIN_IMAGES labelled images and
    >= VAL_MIN_PER_CLASS of every class that train has."""
    if val_y.size < VAL_MIN_IMAGES:
        return False
    counts = np.bincount(val_y, minlength=int(max(train_y.max(), val_y.max())) + 1)
    return bool(counts[np.unique(train_y)].min() >= VAL_MIN_PER_CLASS)


def group_keys(groups: Any | None, n: int, tag: str) -> np.ndarray:
    """Group key per row as strings; empty keys (and no groups at all) make each row its own group."""
    own = np.array([f"\0{tag}{i}" for i in range(n)], dtype=object)
    if groups is None:
        return own
    g = np.asarray(groups, dtype=object)
    if g.shape != (n,):
        raise ValueError(f"groups has shape {g.shape}, expected ({n},)")
    named = np.array([bool(str(v)) for v in g], dtype=bool)
    return np.where(named, np.array([str(v) for v in g], dtype=object), own)


def cv_folds(
    y: np.ndarray, groups: np.ndarray, folds: int = CV_FOLDS, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Grouped, stratified, seeded (fit, held-out) index pairs; None when CV cannot rank lam (a class in
    fewer than two groups could never be both fitted and scored). Uses min(folds, groups holding the
    rarest class) folds, at least 2.

    Groups, largest first (seeded order among equal sizes), go one by one to the fold holding the fewest
    images of the group's majority class so far (ties: the smallest fold). scikit-learn's
    StratifiedGroupKFold balances better on mixed groups but costs seconds per thousand groups
    (a Python loop over folds x classes per group); here the work per group is one argmin."""
    _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    classes, yc = np.unique(y, return_inverse=True)
    n_groups, n_cls = int(codes.max()) + 1 if codes.size else 0, classes.size
    counts = np.bincount(codes * n_cls + yc, minlength=n_groups * n_cls).reshape(n_groups, n_cls)
    k = min(folds, int((counts > 0).sum(axis=0).min())) if n_groups else 0
    if k < 2:
        return None
    major = counts.argmax(axis=1)
    size = counts.sum(axis=1)
    order = np.random.default_rng(seed).permutation(n_groups)
    order = order[np.argsort(-size[order], kind="stable")]
    of_class = np.zeros((k, n_cls), dtype=np.int64)
    total = np.zeros(k, dtype=np.int64)
    fold_of = np.empty(n_groups, dtype=np.int64)
    for g in order:
        f = int(np.argmin(of_class[:, major[g]] * (y.size + 1) + total))
        fold_of[g] = f
        of_class[f] += counts[g]
        total[f] += size[g]
    row_fold = fold_of[codes]
    split = [(np.flatnonzero(row_fold != f), np.flatnonzero(row_fold == f)) for f in range(k)]
    return [(fit, held) for fit, held in split if held.size and fit.size]


def _search(
    lam_path: Sequence[float],
    patience: int,
    score_at: Callable[[float], float],
    path: list[dict[str, float]],
    name: str,
) -> tuple[float, float]:
    """Walk lam from strong to weak; (best lam, its score). Ties keep the stronger regularisation."""
    best: tuple[float, float] | None = None
    since_best = 0
    for lam in lam_path:
        f1 = score_at(lam)
        path.append({"lam": lam, f"{name}_macro_f1": f1})
        if best is None or f1 > best[1]:
            best, since_best = (lam, f1), 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    assert best is not None
    return best


def _tensors(x: np.ndarray, mean: np.ndarray, std: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy((x - mean) / std).to(dev)


def _fit_at(
    x: np.ndarray, y: np.ndarray, n_classes: int, lam_path: Sequence[float], max_iter: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weight, bias, mean, std) at lam_path[-1], warm-started along lam_path as the search was, so the
    final fit lands where the search's fits did."""
    mean, std = standardiser(x)
    dev = compute_device()
    z = _tensors(x, mean, std, dev)
    zt = z.T.contiguous()
    yt = torch.from_numpy(y).to(dev)
    w = torch.zeros(x.shape[1], n_classes, device=dev)
    b = torch.zeros(n_classes, device=dev)
    for lam in lam_path:
        w, b = _fit(z, zt, yt, n_classes, float(lam), w, b, max_iter)
    return w.cpu().numpy(), b.cpu().numpy(), mean, std


def _select_on_val(
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    n_classes: int,
    lam_path: Sequence[float],
    patience: int,
    max_iter: int,
) -> LinearProbe:
    mean, std = standardiser(x)
    dev = compute_device()
    z = _tensors(x, mean, std, dev)
    zt = z.T.contiguous()
    yt = torch.from_numpy(y).to(dev)
    zv = _tensors(xv, mean, std, dev)
    state = {"w": torch.zeros(x.shape[1], n_classes, device=dev), "b": torch.zeros(n_classes, device=dev)}
    kept: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def score_at(lam: float) -> float:
        state["w"], state["b"] = _fit(z, zt, yt, n_classes, lam, state["w"], state["b"], max_iter)
        kept[lam] = (state["w"], state["b"])
        return macro_f1(yv, (zv @ state["w"] + state["b"]).argmax(dim=1).cpu().numpy(), n_classes)

    path: list[dict[str, float]] = []
    lam, f1 = _search(lam_path, patience, score_at, path, "val")
    w, b = kept[lam]
    return LinearProbe(mean, std, w.cpu().numpy(), b.cpu().numpy(), lam, f1, path, lam_source="val")


def _cv_scorer(
    x: np.ndarray,
    y: np.ndarray,
    split: list[tuple[np.ndarray, np.ndarray]],
    n_classes: int,
    max_iter: int,
) -> Callable[[float], float]:
    """A function lam -> pooled out-of-fold macro-F1. All folds are fitted as one L-BFGS problem (their
    losses are independent, so the joint minimiser is each fold's own; one product per step instead of
    one per fold, which matters because small probes are dominated by per-call overhead). The folds share
    the standardisation of train + val (feature statistics, no labels)."""
    mean, std = standardiser(x)
    dev = compute_device()
    z = _tensors(x, mean, std, dev)
    zt = z.T.contiguous()
    yt = torch.from_numpy(y).to(dev)
    n_folds = len(split)
    # mask[i, f] = 1 / |fit rows of f| for the rows fold f fits on: each fold's mean loss, summed
    mask = torch.zeros(y.size, n_folds, device=dev)
    for f, (fit_idx, _) in enumerate(split):
        mask[torch.from_numpy(fit_idx).to(dev), f] = 1.0 / fit_idx.size
    state = {
        "w": torch.zeros(x.shape[1], n_folds * n_classes, device=dev),
        "b": torch.zeros(n_folds * n_classes, device=dev),
    }

    def score_at(lam: float) -> float:
        state["w"], state["b"] = _fit_folds(z, zt, yt, mask, n_classes, lam, state["w"], state["b"], max_iter)
        logits = (z @ state["w"] + state["b"]).view(y.size, n_folds, n_classes)
        pred = np.empty(y.size, dtype=np.int64)
        for f, (_, held_idx) in enumerate(split):
            held = torch.from_numpy(held_idx).to(dev)
            pred[held_idx] = logits[held, f].argmax(dim=1).cpu().numpy()
        return macro_f1(y, pred, n_classes)

    return score_at


def _fit_folds(
    z: torch.Tensor,
    zt: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    n_classes: int,
    lam: float,
    w: torch.Tensor,
    b: torch.Tensor,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_fit` for F folds at once: w (d, F*K), mask (n, F) weighting each row's loss per fold. Minimises
    sum over folds of (mean cross-entropy on its fit rows + lam/2 ||w_f||^2)."""
    w = w.clone()
    b = b.clone()
    w.grad = torch.zeros_like(w)
    b.grad = torch.zeros_like(b)
    n, n_folds = mask.shape
    rows = torch.arange(n, device=y.device)
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
        logp = torch.log_softmax((z @ w + b).view(n, n_folds, n_classes), dim=2)
        loss = -(logp[rows, :, y] * mask).sum() + 0.5 * lam * (w * w).sum()
        resid = logp.exp_()
        resid[rows, :, y] -= 1.0
        resid *= mask.unsqueeze(2)
        resid = resid.view(n, n_folds * n_classes)
        torch.mm(zt, resid, out=w.grad)
        w.grad.add_(w, alpha=lam)
        b.grad.copy_(resid.sum(dim=0))
        return loss

    with torch.no_grad(), flush_denormals(), cpu_threads(z.device):
        opt.step(closure)
    return w, b


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
    *,
    train_groups: Any | None = None,
    val_groups: Any | None = None,
) -> ProbeOutcome:
    """Probe on seeded stratified support sets per shot count (curve) and on the whole training split.
    The headline probe chooses lam by the module's rule (groups keep CV folds apart); support-set probes
    choose it on val when there is one (module docstring)."""
    xtr = np.asarray(train_x, dtype=np.float32)
    ytr = np.asarray(train_y, dtype=np.int64)
    yte = np.asarray(test_y, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    check_shots(shots, ytr, names)
    if repeats < 1:
        raise UsageError(f"--repeats: {repeats} must be at least 1")
    tg = None if train_groups is None else np.asarray(train_groups, dtype=object)
    full = fit_probe(xtr, ytr, n_classes, val_x, val_y, train_groups=tg, val_groups=val_groups, seed=seed)
    curve = []
    for s in shots:
        values = []
        for r in range(repeats_for(s, repeats)):
            if s == ALL:
                probe = full
            else:
                sup = draw_support(ytr, s, n_classes, seed, r)
                probe = fit_probe(
                    xtr[sup],
                    ytr[sup],
                    n_classes,
                    val_x,
                    val_y,
                    train_groups=None if tg is None else tg[sup],
                    selection="val",
                    seed=seed,
                )
            values.append(macro_f1(yte, probe.predict(test_x), n_classes))
            if on_step is not None:
                on_step()
        curve.append(curve_point(s, values, None))
    for point in curve:
        point.pop("k")
    return ProbeOutcome(curve=curve, probe=full, pred=full.predict(test_x), scores=full.predict_proba(test_x))


def split_groups(d: Any, split: str) -> np.ndarray | None:
    """The manifest group keys of a split's labelled rows, in `TaskData.split` order (None if absent)."""
    emb = d.embeddings
    if emb.groups.shape[0] != emb.features.shape[0]:
        return None
    return emb.groups[emb.mask(split) & (emb.labels >= 0)]
