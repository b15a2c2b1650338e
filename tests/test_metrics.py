"""Metrics equal scikit-learn's definitions; bootstrap intervals and per-group reports behave."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from dermctl.eval.metrics import (
    auroc_ovr,
    balanced_accuracy,
    bootstrap_metrics,
    by_group,
    classification_report,
    confusion,
    macro_f1,
)


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn_with_absent_classes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    y = rng.integers(0, 4, 50)  # classes 4 and 5 never occur in y_true
    p = rng.integers(0, 5, 50)  # class 5 never predicted either
    ref = f1_score(y, p, average="macro", labels=list(range(k)), zero_division=0)
    assert macro_f1(y, p, k) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_balanced_accuracy_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 80)
    p = rng.integers(0, 5, 80)
    assert balanced_accuracy(y, p, 5) == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)


def test_confusion_rows_are_truth() -> None:
    cm = confusion([0, 0, 1, 2], [0, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_auroc_matches_sklearn_ovr_macro() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    s = rng.random((120, 3)) + np.eye(3)[y] * 0.5
    s = s / s.sum(1, keepdims=True)
    ref = roc_auc_score(y, s, multi_class="ovr", average="macro")
    assert auroc_ovr(y, s, 3) == pytest.approx(ref, abs=1e-9)
    assert auroc_ovr(np.zeros(5, dtype=int), s[:5], 3) is None  # one class: undefined


def test_report_keys_and_ci() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 3, 300))
    r = classification_report(
        y, p, 3, scores=np.eye(3)[p], class_names=["a", "b", "c"], bootstrap=500, seed=3
    )
    assert set(r) == {
        "macro_f1",
        "macro_f1_ci",
        "balanced_accuracy",
        "balanced_accuracy_ci",
        "per_class_f1",
        "per_class_recall",
        "confusion",
        "auroc_ovr",
        "n",
    }
    lo, hi = r["macro_f1_ci"]
    assert lo < r["macro_f1"] < hi and hi - lo < 0.2
    assert list(r["per_class_f1"]) == ["a", "b", "c"]
    assert r["n"] == 300
    assert r["auroc_ovr"] is not None
    again = classification_report(y, p, 3, bootstrap=500, seed=3)
    assert again["macro_f1_ci"] == r["macro_f1_ci"]  # seeded
    assert again["auroc_ovr"] is None


def test_bootstrap_resamples_are_real_macro_f1s() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    p = np.array([0, 1, 2, 0, 1, 2])
    f1s, bas = bootstrap_metrics(y, p, 3, n_boot=50, seed=0)
    assert f1s.shape == (50,) and np.all(bas == 1.0)
    # perfect predictions: a resample scores 1 unless it misses a class entirely (then that class scores 0)
    assert set(np.round(f1s, 6)) <= {1.0, round(2 / 3, 6), round(1 / 3, 6)}


def test_by_group_splits_samples() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0, 1, 1, 1, 0, 0])
    g = np.array(["1", "1", "2", "2", "-1", "-1"])
    out = by_group(y, p, g, 2, bootstrap=10)
    assert list(out) == ["-1", "1", "2"]
    assert out["1"]["macro_f1"] == 1.0 and out["1"]["n"] == 2
    assert out["2"]["macro_f1"] == pytest.approx(macro_f1([0, 1], [1, 1], 2))


def test_binary_auroc_equals_sklearn_on_unnormalised_scores():
    from sklearn.metrics import roc_auc_score

    from dermctl.eval.metrics import auroc_ovr

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 60)
    scores = rng.normal(size=(60, 2)) + np.stack([1 - y, y], axis=1) * 0.5  # not normalised
    assert auroc_ovr(y, scores, 2) == pytest.approx(roc_auc_score(y, scores[:, 1]))


@pytest.mark.parametrize("seed", range(3))
def test_per_class_recall_and_confusion_equal_sklearn(seed: int) -> None:
    from sklearn.metrics import confusion_matrix, recall_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 60)
    y[y == 3] = 2  # class 3 absent from the truth: recall 0, as sklearn's zero_division=0
    p = rng.integers(0, 4, 60)
    rep = classification_report(y, p, 4, class_names=["a", "b", "c", "d"], bootstrap=10)
    expected = recall_score(y, p, labels=range(4), average=None, zero_division=0)
    assert list(rep["per_class_recall"].values()) == pytest.approx(list(expected))
    assert rep["confusion"] == confusion_matrix(y, p, labels=range(4)).tolist()
