"""The "stratified random" baseline of Table 2 (Gröger et al.): predict at random with the training
split's class frequencies, ignoring the image (scikit-learn's DummyClassifier(strategy="stratified")).

A single draw is noisy on small test sets, so the baseline is averaged over many seeded draws; on
balanced data its expected macro-F1 is 1/K.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dermctl.eval.fewshot import curve_point
from dermctl.eval.metrics import (
    auroc_ovr,
    balanced_accuracy_from_confusion,
    f1_from_confusion,
    percentile_ci,
)

DEFAULT_DRAWS = 1000


def class_frequencies(train_y: Any, n_classes: int) -> np.ndarray:
    y = np.asarray(train_y, dtype=np.int64)
    counts = np.bincount(y[y >= 0], minlength=n_classes).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("the training split has no labelled image")
    return counts / counts.sum()


def stratified_baseline(
    train_y: Any,
    test_y: Any,
    n_classes: int,
    class_names: Sequence[str] | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    groups: Any | None = None,
) -> dict[str, Any]:
    """Metrics of `draws` stratified random predictions of the test split.

    Returns {"metrics": report (means over draws; the *_ci keys are 2.5/97.5 percentiles over draws),
    "curve": [one point, shots "all", with every draw's macro-F1], "per_group": {value: report} or None}.
    """
    yte = np.asarray(test_y, dtype=np.int64)
    freq = class_frequencies(train_y, n_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    rng = np.random.default_rng(seed)
    preds = rng.choice(n_classes, size=(draws, yte.size), p=freq)
    scores = np.tile(freq, (yte.size, 1))

    def report(mask: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        t = yte[mask]
        p = preds[:, mask]
        kk = n_classes * n_classes
        flat = t[None, :] * n_classes + p + (np.arange(draws) * kk)[:, None]
        cm = np.bincount(flat.ravel(), minlength=draws * kk).reshape(draws, n_classes, n_classes)
        f1 = f1_from_confusion(cm)
        macro = f1.mean(axis=1)
        ba = balanced_accuracy_from_confusion(cm)
        return (
            {
                "macro_f1": float(macro.mean()),
                "macro_f1_ci": percentile_ci(macro),
                "balanced_accuracy": float(ba.mean()),
                "balanced_accuracy_ci": percentile_ci(ba),
                "per_class_f1": {n: float(v) for n, v in zip(names, f1.mean(axis=0), strict=True)},
                "auroc_ovr": auroc_ovr(t, scores[mask], n_classes),
                "n": int(t.size),
            },
            macro,
        )

    metrics, values = report(np.ones(yte.size, dtype=bool))
    per_group = None
    if groups is not None:
        g = np.asarray([str(v) for v in np.asarray(groups).ravel()])
        per_group = {v: report(g == v)[0] for v in sorted(set(g.tolist()))}
    point = curve_point("all", values, None)
    point.pop("k")
    point["macro_f1_ci"] = percentile_ci(values)
    return {"metrics": metrics, "curve": [point], "per_group": per_group, "class_frequencies": freq.tolist()}


STRATIFIED = "stratified"
