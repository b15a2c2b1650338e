"""kNN predictions equal a brute-force NumPy implementation of DINO's rule."""

from __future__ import annotations

import numpy as np
import pytest

from dermctl.errors import UsageError
from dermctl.eval.fewshot import draw_support
from dermctl.eval.knn import KnnSweep, choose_k, knn_fewshot, knn_predict


def brute_force(train_x, train_y, test_x, n_classes, k, T, vote):
    """Reference: full similarity matrix, stable full sort, explicit loops over neighbours."""
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = te.astype(np.float64) @ tr.T.astype(np.float64)
    k = min(k, len(train_y))
    preds = []
    for row in sims:
        order = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(n_classes)
        for j in order:
            votes[train_y[j]] += np.exp(row[j] / T) if vote == "weighted" else 1.0
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def data(seed=0, n_train=200, n_test=150, d=32, k=5, noise=2.0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d))
    ytr = rng.integers(0, k, n_train)
    yte = rng.integers(0, k, n_test)
    xtr = (means[ytr] + noise * rng.standard_normal((n_train, d))).astype(np.float32)
    xte = (means[yte] + noise * rng.standard_normal((n_test, d))).astype(np.float32)
    return xtr, ytr, xte, yte


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("k", [1, 7, 20, 500])  # 500 > n_train: capped
def test_knn_predict_equals_brute_force(vote: str, k: int) -> None:
    xtr, ytr, xte, _ = data()
    pred, scores = knn_predict(xtr, ytr, xte, 5, k=k, T=0.07, vote=vote)
    assert np.array_equal(pred, brute_force(xtr, ytr, xte, 5, k, 0.07, vote))
    assert scores.shape == (150, 5)
    assert np.allclose(scores.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("vote", ["weighted", "majority"])
def test_sweep_on_support_sets_equals_brute_force(vote: str, backend: str) -> None:
    xtr, ytr, xte, _ = data(seed=1)
    sweep = KnnSweep(xtr, ytr, xte, 5, device="cpu", backend=backend)
    for shots, k in [(1, 20), (3, 20), (10, 7)]:  # 1 shot x 5 classes: k capped to 5
        for r in range(3):
            sup = draw_support(ytr, shots, 5, seed=0, repeat=r)
            pred, _ = sweep.predict(sup, k, 0.07, vote)
            assert np.array_equal(pred, brute_force(xtr[sup], ytr[sup], xte, 5, k, 0.07, vote))
    pred, _ = sweep.predict(None, 20, 0.07, vote)
    assert np.array_equal(pred, brute_force(xtr, ytr, xte, 5, 20, 0.07, vote))
    many = sweep.predict_many_k(None, [1, 5, 20])
    assert np.array_equal(many[5], brute_force(xtr, ytr, xte, 5, 5, 0.07, "weighted"))
    sup = draw_support(ytr, 10, 5, seed=0, repeat=0)
    many = sweep.predict_many_k(sup, [3, 7, 500])  # prefixes of one sorted top-k; 500 capped at 50
    assert sorted(many) == [3, 7, 50]
    for k in (3, 7, 50):
        assert np.array_equal(many[k], brute_force(xtr[sup], ytr[sup], xte, 5, k, 0.07, "weighted"))


def test_vote_ties_go_to_lowest_class() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    test = np.array([[1.0, 1.0]], dtype=np.float32)  # equally similar to both rows
    for vote in ("weighted", "majority"):
        pred, scores = knn_predict(train, [2, 1], test, 3, k=2, vote=vote)
        assert pred[0] == 1 and scores[0, 1] == pytest.approx(scores[0, 2])
        pred, _ = KnnSweep(train, [2, 1], test, 3).predict(None, 2, 0.07, vote)
        assert pred[0] == 1


def test_fewshot_curve_and_headline() -> None:
    xtr, ytr, xte, yte = data(seed=2, noise=0.8)
    out = knn_fewshot(xtr, ytr, xte, yte, 5, shots=[1, 5, "all"], repeats=4, seed=0)
    assert [p["shots"] for p in out.curve] == [1, 5, "all"]
    assert [p["repeats"] for p in out.curve] == [4, 4, 1]
    assert out.curve[0]["k"] == 5 and out.curve[1]["k"] == 20  # 1 shot x 5 classes caps k at 5
    assert out.curve[2]["macro_f1_mean"] > out.curve[0]["macro_f1_mean"]
    lo, hi = out.curve[1]["macro_f1_ci"]
    assert lo <= out.curve[1]["macro_f1_mean"] <= hi
    assert np.array_equal(out.pred, brute_force(xtr, ytr, xte, 5, 20, 0.07, "weighted"))


def test_k_auto_chooses_on_validation() -> None:
    xtr, ytr, xte, yte = data(seed=3)
    xva, yva = xte[:60], yte[:60]
    sweep = KnnSweep(xtr, ytr, xva, 5)
    k = choose_k(sweep, yva, None, 0.07, "weighted")
    assert k in (1, 3, 5, 10, 20, 50, 100, 200)
    out = knn_fewshot(xtr, ytr, xte, yte, 5, shots=["all"], k="auto", val_x=xva, val_y=yva)
    assert out.k == k
    with pytest.raises(UsageError, match="--k auto"):
        knn_fewshot(xtr, ytr, xte, yte, 5, shots=["all"], k="auto")


def test_bad_rule_options() -> None:
    xtr, ytr, xte, _ = data()
    with pytest.raises(UsageError, match="--vote"):
        knn_predict(xtr, ytr, xte, 5, vote="soft")
    with pytest.raises(UsageError, match="--k"):
        knn_predict(xtr, ytr, xte, 5, k=0)
