"""The L-BFGS probe matches scikit-learn's logistic regression and picks its L2 strength on validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from dermctl.eval.metrics import macro_f1
from dermctl.eval.probe import fit_probe, probe_fewshot


def hard(seed=0, n=600, d=64, k=4, sep=0.35):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * sep

    def draw(m):
        y = rng.integers(0, k, m)
        return (means[y] + rng.standard_normal((m, d)) + 3.0).astype(np.float32), y

    return draw(n), draw(200), draw(400)


@pytest.mark.parametrize("lam", [1e-1, 1e-3])
def test_fixed_lam_equals_sklearn(lam: float) -> None:
    (xtr, ytr), _, (xte, yte) = hard()
    probe = fit_probe(xtr, ytr, 4, xte[:1], yte[:1], lams=[lam])
    sc = StandardScaler().fit(xtr)
    ref = LogisticRegression(C=1.0 / (lam * len(ytr)), max_iter=10000).fit(sc.transform(xtr), ytr)
    ref_pred = ref.predict(sc.transform(xte))
    ours = probe.predict(xte)
    assert abs(macro_f1(yte, ours, 4) - macro_f1(yte, ref_pred, 4)) <= 0.01
    assert (ours == ref_pred).mean() > 0.97


def test_selected_probe_not_worse_than_sklearn_default() -> None:
    (xtr, ytr), (xva, yva), (xte, yte) = hard(seed=1)
    probe = fit_probe(xtr, ytr, 4, xva, yva)
    sc = StandardScaler().fit(xtr)
    ref = LogisticRegression(max_iter=10000).fit(sc.transform(xtr), ytr)
    ref_f1 = macro_f1(yte, ref.predict(sc.transform(xte)), 4)
    assert macro_f1(yte, probe.predict(xte), 4) >= ref_f1 - 0.01
    assert probe.lam in [p["lam"] for p in probe.path]
    assert probe.val_macro_f1 == max(p["val_macro_f1"] for p in probe.path)
    lams = [p["lam"] for p in probe.path]
    assert lams == sorted(lams, reverse=True)  # strong to weak, warm-started


def test_no_validation_uses_sklearn_default_c() -> None:
    (xtr, ytr), _, _ = hard(seed=2, n=200)
    probe = fit_probe(xtr, ytr, 4)
    assert probe.lam == pytest.approx(1 / 200)
    proba = probe.predict_proba(xtr)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5)


def test_probe_fewshot_curve() -> None:
    (xtr, ytr), (xva, yva), (xte, yte) = hard(seed=3, sep=0.6)
    out = probe_fewshot(xtr, ytr, xte, yte, 4, shots=[2, "all"], repeats=3, seed=0, val_x=xva, val_y=yva)
    assert [p["shots"] for p in out.curve] == [2, "all"]
    assert out.curve[0]["repeats"] == 3 and len(out.curve[0]["values"]) == 3
    assert out.curve[1]["macro_f1_mean"] == pytest.approx(macro_f1(yte, out.pred, 4))
    assert out.curve[1]["macro_f1_mean"] > out.curve[0]["macro_f1_mean"]
