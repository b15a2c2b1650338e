"""The stratified baseline scores about 1/K on balanced data and follows the training frequencies."""

from __future__ import annotations

import numpy as np
import pytest

from dermctl.eval.baselines import class_frequencies, stratified_baseline


@pytest.mark.parametrize("k", [2, 5, 8])
def test_balanced_is_one_over_k(k: int) -> None:
    ytr = np.repeat(np.arange(k), 50)
    yte = np.repeat(np.arange(k), 100)
    out = stratified_baseline(ytr, yte, k, draws=300, seed=0)
    assert out["metrics"]["macro_f1"] == pytest.approx(1.0 / k, abs=0.01)
    assert out["metrics"]["balanced_accuracy"] == pytest.approx(1.0 / k, abs=0.01)
    lo, hi = out["metrics"]["macro_f1_ci"]
    assert lo < 1.0 / k < hi
    assert out["curve"][0]["shots"] == "all" and out["curve"][0]["repeats"] == 300
    assert out["metrics"]["auroc_ovr"] == pytest.approx(0.5)


def test_imbalanced_matches_expected_f1() -> None:
    ytr = np.repeat([0, 1], [90, 10])
    yte = np.repeat([0, 1], [900, 100])
    out = stratified_baseline(ytr, yte, 2, class_names=["nevus", "mel"], draws=400, seed=1)
    # expected F1 of class c when predicting with prob p_c and true share q_c: 2 p q / (p + q) = p here
    assert out["metrics"]["per_class_f1"]["nevus"] == pytest.approx(0.9, abs=0.01)
    assert out["metrics"]["per_class_f1"]["mel"] == pytest.approx(0.1, abs=0.02)
    assert class_frequencies(ytr, 2).tolist() == [0.9, 0.1]


def test_seeded_and_grouped() -> None:
    ytr = np.repeat(np.arange(3), 10)
    yte = np.tile(np.arange(3), 20)
    g = np.array(["1", "2"] * 30)
    a = stratified_baseline(ytr, yte, 3, draws=50, seed=4, groups=g)
    b = stratified_baseline(ytr, yte, 3, draws=50, seed=4, groups=g)
    assert a["metrics"] == b["metrics"]
    assert set(a["per_group"]) == {"1", "2"} and a["per_group"]["1"]["n"] == 30
