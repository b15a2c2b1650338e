"""Classification metrics of the study: macro-F1 (its headline number), balanced accuracy, AUROC,
bootstrap confidence intervals and per-group (Fitzpatrick skin type) reports.

Gröger et al. report macro-F1 on the test sets (Table 2, Figure 1). `macro_f1` equals scikit-learn's
``f1_score(y_true, y_pred, average="macro", labels=range(n_classes), zero_division=0)``: every class of
the task counts, a class with no true and no predicted sample scores 0. It is computed from a confusion
matrix in NumPy so that 1,000 bootstrap resamples take milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_BOOT_CHUNK = 4_000_000  # resampled entries per chunk: bounds bootstrap memory on large test sets


def _as_labels(y: Any, name: str) -> np.ndarray:
    arr = np.asarray(y).astype(np.int64, copy=False).ravel()
    return arr


def confusion(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 of one (K, K) or many (B, K, K) confusion matrices; 0 where undefined."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # 2tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 0.0)
    return f1


def recall_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class recall (sensitivity) of a (K, K) confusion matrix; 0 for a class with no true sample."""
    tp = np.diagonal(cm).astype(np.float64)
    support = cm.sum(axis=1)
    return np.where(support > 0, tp / np.maximum(support, 1), 0.0)


def balanced_accuracy_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in y_true (scikit-learn's balanced_accuracy_score)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(axis=-1)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, tp / np.maximum(support, 1), 0.0)
    n_present = present.sum(axis=-1)
    return np.where(n_present > 0, recall.sum(axis=-1) / np.maximum(n_present, 1), 0.0)


def macro_f1(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Macro-averaged F1 over classes 0..n_classes-1 (sklearn-equal, zero_division=0)."""
    return float(f1_from_confusion(confusion(y_true, y_pred, n_classes)).mean())


def balanced_accuracy(y_true: Any, y_pred: Any, n_classes: int) -> float:
    """Mean per-class recall over the classes present in y_true."""
    return float(balanced_accuracy_from_confusion(confusion(y_true, y_pred, n_classes)))


def auroc_ovr(y_true: Any, scores: Any, n_classes: int) -> float | None:
    """Macro one-vs-rest AUROC over the classes present in y_true; None when undefined
    (fewer than two classes present, or scores of the wrong shape)."""
    from sklearn.metrics import roc_auc_score

    t = _as_labels(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape != (t.size, n_classes):
        return None
    present = np.unique(t)
    if present.size < 2:
        return None
    if n_classes == 2:
        # Binary: one AUROC of the positive class's score, as scikit-learn's roc_auc_score does.
        return float(roc_auc_score((t == 1).astype(np.int64), s[:, 1]))
    aucs = []
    for c in present:
        pos = t == c
        if pos.all():
            continue
        aucs.append(roc_auc_score(pos.astype(np.int64), s[:, c]))
    return float(np.mean(aucs)) if aucs else None


def bootstrap_metrics(
    y_true: Any, y_pred: Any, n_classes: int, n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Macro-F1 and balanced accuracy of `n_boot` resamples (with replacement) of the test samples."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    n = t.size
    if n == 0 or n_boot <= 0:
        return np.zeros(0), np.zeros(0)
    rng = np.random.default_rng(seed)
    codes = t * n_classes + p
    kk = n_classes * n_classes
    f1s = np.empty(n_boot)
    bas = np.empty(n_boot)
    per_chunk = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_boot, per_chunk):
        b = min(per_chunk, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = codes[idx] + (np.arange(b) * kk)[:, None]
        cm = np.bincount(flat.ravel(), minlength=b * kk).reshape(b, n_classes, n_classes)
        f1s[start : start + b] = f1_from_confusion(cm).mean(axis=-1)
        bas[start : start + b] = balanced_accuracy_from_confusion(cm)
    return f1s, bas


def percentile_ci(values: Any, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of `values` ([nan, nan] when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [float("nan"), float("nan")]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def classification_report(
    y_true: Any,
    y_pred: Any,
    n_classes: int,
    scores: Any | None = None,
    class_names: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics every result carries.

    Keys: macro_f1, macro_f1_ci ([lo, hi], 95 % percentile bootstrap over test samples), balanced_accuracy,
    balanced_accuracy_ci, per_class_f1 ({class name: F1}), per_class_recall ({class name: recall (0 for a
    class absent from y_true)}), confusion (rows = true class, columns = predicted, class_names order),
    auroc_ovr (macro one-vs-rest when `scores` (n, n_classes) are given and defined, else None), n (test
    samples).
    """
    cm = confusion(y_true, y_pred, n_classes)
    f1 = f1_from_confusion(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"class_names has {len(names)} names for {n_classes} classes")
    boot_f1, boot_ba = bootstrap_metrics(y_true, y_pred, n_classes, bootstrap, seed)
    return {
        "macro_f1": float(f1.mean()),
        "macro_f1_ci": percentile_ci(boot_f1),
        "balanced_accuracy": float(balanced_accuracy_from_confusion(cm)),
        "balanced_accuracy_ci": percentile_ci(boot_ba),
        "per_class_f1": {name: float(v) for name, v in zip(names, f1, strict=True)},
        "per_class_recall": {
            name: float(v) for name, v in zip(names, recall_from_confusion(cm), strict=True)
        },
        "confusion": cm.astype(int).tolist(),
        "auroc_ovr": auroc_ovr(y_true, scores, n_classes) if scores is not None else None,
        "n": int(cm.sum()),
    }


def by_group(
    y_true: Any,
    y_pred: Any,
    groups: Any,
    n_classes: int,
    scores: Any | None = None,
    class_names: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{group value (as text): classification_report of that group's samples}, e.g. per Fitzpatrick
    skin type (Groh et al. 2021 report Fitzpatrick17k results this way)."""
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    g = np.asarray([str(x) for x in np.asarray(groups).ravel()])
    if g.size != t.size:
        raise ValueError(f"groups has {g.size} values for {t.size} samples")
    s = None if scores is None else np.asarray(scores)
    out: dict[str, dict[str, Any]] = {}
    for value in sorted(set(g.tolist()), key=_group_key):
        m = g == value
        out[value] = classification_report(
            t[m], p[m], n_classes, None if s is None else s[m], class_names, bootstrap, seed
        )
    return out


def _group_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
