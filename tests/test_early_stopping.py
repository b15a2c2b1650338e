"""dermctl.runtime.early_stopping: patience on a validated value (pretraining: val loss; fine-tuning: val F1)."""

from __future__ import annotations

import math

import pytest

from dermctl.runtime.early_stopping import EarlyStopping


def test_stops_after_exactly_patience_epochs_on_a_plateau():
    es = EarlyStopping(patience=5)
    losses = [1.0, 0.8, 0.8, 0.85, 0.81, 0.9, 0.8, 0.7]
    stopped_at = None
    for epoch, loss in enumerate(losses):
        es.step(loss, epoch)
        if es.should_stop:
            stopped_at = epoch
            break
    # best at epoch 1 (0.8); epochs 2..6 do not improve: the 5th of them (epoch 6) stops the run
    assert stopped_at == 6
    assert es.best == 0.8 and es.best_epoch == 1


def test_improvement_resets_the_counter_and_min_delta():
    es = EarlyStopping(patience=2, min_delta=0.1)
    assert es.step(1.0, 0)
    assert not es.step(0.95, 1)  # better, but not by min_delta
    assert es.bad_epochs == 1
    assert es.step(0.85, 2)
    assert es.bad_epochs == 0 and not es.should_stop
    es.step(0.9, 3)
    es.step(0.9, 4)
    assert es.should_stop


def test_nan_never_improves_and_zero_patience_never_stops():
    es = EarlyStopping(patience=0)
    assert not es.step(math.nan, 0)
    for e in range(1, 20):
        es.step(5.0 + e, e)
    assert not es.should_stop and es.best_epoch == 1


def test_state_round_trip():
    es = EarlyStopping(patience=3)
    es.step(2.0, 0)
    es.step(3.0, 1)
    other = EarlyStopping(patience=3)
    other.load_state_dict(es.state_dict())
    assert (other.best, other.best_epoch, other.bad_epochs) == (2.0, 0, 1)


def test_max_mode_for_fine_tuning_f1():
    es = EarlyStopping(patience=2, mode="max")
    assert [es.step(v, e) for e, v in enumerate([0.2, 0.5, 0.5, 0.4])] == [True, True, False, False]
    assert es.best_epoch == 1 and es.best == 0.5 and es.should_stop  # a tie keeps the earlier epoch
    es = EarlyStopping(patience=3, mode="min")
    for e, v in enumerate([1.0, 0.7, 0.9, 0.6, 0.8]):
        es.step(v, e)
    assert es.best_epoch == 3 and not es.should_stop
    with pytest.raises(ValueError, match="auc"):
        EarlyStopping(mode="auc")


def test_loads_a_fine_tuning_state_saved_before_any_finite_value():
    """0.1.0's fine-tuning stopper saved best=None until the first finite F1."""
    es = EarlyStopping(patience=3, mode="max")
    es.load_state_dict({"best": None, "best_epoch": -1, "bad_epochs": 1})
    assert es.best == -math.inf and es.step(0.1, 1) and es.bad_epochs == 0
