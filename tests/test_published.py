"""dermctl.eval.published (`--protocol paper`): the authors' optimistic kNN and linear evaluation, held
against scikit-learn run the way their code runs it (brute force, independent of dermctl's kNN code)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from dermctl.errors import UsageError
from dermctl.eval.fewshot import ALL, draw_support
from dermctl.eval.published import PAPER_K_GRID, check_protocol, knn_paper, linear_paper

N_CLASSES = 4


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (N_CLASSES, 16))
    ytr = np.repeat(np.arange(N_CLASSES), 30)
    yte = np.repeat(np.arange(N_CLASSES), 15)
    xtr = centres[ytr] + rng.normal(0, 1.4, (ytr.size, 16))
    xte = centres[yte] + rng.normal(0, 1.4, (yte.size, 16))
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def _sklearn_best_over_k(xs, ys, xte, yte) -> float:
    """The authors' rule: KNeighborsClassifier(metric="cosine"), uniform votes, best test F1 over the grid."""
    best = 0.0
    for k in PAPER_K_GRID:
        if k > len(ys):  # scikit-learn refuses k > support size; dermctl caps, which repeats the largest k
            continue
        clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(xs, ys)
        f1 = f1_score(yte, clf.predict(xte), average="macro", labels=range(N_CLASSES), zero_division=0)
        best = max(best, f1)
    return best


def test_knn_paper_equals_sklearn_best_k_on_test_and_keeps_the_maximum():
    xtr, ytr, xte, yte = _data()
    out = knn_paper(xtr, ytr, xte, yte, N_CLASSES, shots=(1, 5, ALL), repeats=4, seed=3)
    for point in out.curve:
        reps = 1 if point["shots"] == ALL else 4
        expected = []
        for r in range(reps):
            sup = draw_support(ytr, point["shots"], N_CLASSES, 3, r)
            expected.append(_sklearn_best_over_k(xtr[sup], ytr[sup], xte, yte))
        assert point["values"] == pytest.approx(expected, abs=1e-9), point["shots"]
        assert point["macro_f1_max"] == pytest.approx(max(expected))
    # headline predictions: the whole training split at the k that scored best on test
    clf = KNeighborsClassifier(n_neighbors=out.k, metric="cosine", algorithm="brute").fit(xtr, ytr)
    assert np.array_equal(out.pred, clf.predict(xte))


def test_linear_paper_is_untuned_sklearn_logistic_regression():
    xtr, ytr, xte, yte = _data(2)
    out = linear_paper(xtr, ytr, xte, yte, N_CLASSES, shots=(5, ALL), repeats=3, seed=1)
    ref = LogisticRegression().fit(xtr, ytr)
    assert np.array_equal(out.pred, ref.predict(xte))
    assert np.allclose(out.scores, ref.predict_proba(xte), atol=1e-5)
    five = out.curve[0]
    expected = []
    for r in range(3):
        sup = draw_support(ytr, 5, N_CLASSES, 1, r)
        p = LogisticRegression().fit(xtr[sup], ytr[sup]).predict(xte)
        expected.append(f1_score(yte, p, average="macro"))
    assert five["values"] == pytest.approx(expected, abs=1e-9)
    assert five["macro_f1_max"] == pytest.approx(max(expected))


def test_unknown_protocol_is_refused():
    with pytest.raises(UsageError, match="--protocol: 'optimistic'"):
        check_protocol("optimistic")
