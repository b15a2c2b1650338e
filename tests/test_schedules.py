from __future__ import annotations

import numpy as np
import pytest

from dermctl.runtime.schedules import constant_schedule, cosine_schedule, warmup_then_constant


def _official_cosine(base, final, epochs, niter, warmup_epochs=0, start_warmup_value=0.0):
    # Written out from the DINO paper's code description: linspace warm-up, then a cosine over len(iters).
    warmup_iters = warmup_epochs * niter
    warm = np.linspace(start_warmup_value, base, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter - warmup_iters)
    return np.concatenate([warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])


@pytest.mark.parametrize(
    "args",
    [
        (5e-4, 1e-6, 100, 10, 10),
        (0.04, 0.4, 3, 2, 0),
        (1.0, 0.0, 1, 3, 0),
        (0.996, 1.0, 7, 5, 0),
        (0.1, 0.0, 4, 3, 2),
    ],
)
def test_cosine_matches_official_formula(args):
    assert np.allclose(cosine_schedule(*args), _official_cosine(*args), atol=0, rtol=1e-12)


def test_documented_points():
    s = cosine_schedule(1.0, 0.0, epochs=4, iters_per_epoch=5, warmup_epochs=1)
    assert s[0] == 0.0 and s[4] == 1.0  # warm-up ends on the base value
    assert s[5] == 1.0  # the cosine starts at the base value
    assert s[5 + 15 // 2] == pytest.approx(0.5 * (1 + np.cos(np.pi * 7 / 15)))
    assert np.all(np.diff(s[5:]) < 0)


def test_constant_and_teacher_temperature():
    assert np.allclose(constant_schedule(0.3, 2, 4), 0.3)
    t = warmup_then_constant(0.04, 0.07, warmup_epochs=30, epochs=100)
    assert t[0] == 0.04 and t[29] == pytest.approx(0.07) and np.all(t[30:] == 0.07) and len(t) == 100
