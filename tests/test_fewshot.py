"""Support sets: stratified, seeded, drawn from the training rows only; --shots parsing errors."""

from __future__ import annotations

import numpy as np
import pytest

from dermctl.errors import UsageError
from dermctl.eval.fewshot import ALL, check_shots, draw_support, parse_shots


def test_parse_shots() -> None:
    assert parse_shots("10,1,5,all") == [1, 5, 10, "all"]
    assert parse_shots(" 5 , 5 ") == [5]
    with pytest.raises(UsageError, match=r"--shots: 0 .*at least 1"):
        parse_shots("0")
    with pytest.raises(UsageError, match=r"--shots: 'a' in 'a,5' is not a positive integer"):
        parse_shots("a,5")
    with pytest.raises(UsageError, match="--shots"):
        parse_shots("")


def test_support_is_stratified_and_seeded() -> None:
    y = np.repeat([0, 1, 2], [10, 7, 30])
    s = draw_support(y, 5, 3, seed=0, repeat=0)
    assert np.bincount(y[s], minlength=3).tolist() == [5, 5, 5]
    assert len(set(s.tolist())) == 15  # without replacement
    assert np.array_equal(s, draw_support(y, 5, 3, seed=0, repeat=0))
    assert not np.array_equal(s, draw_support(y, 5, 3, seed=0, repeat=1))
    assert not np.array_equal(s, draw_support(y, 5, 3, seed=1, repeat=0))
    assert np.array_equal(draw_support(y, ALL, 3), np.arange(y.size))


def test_support_varies_across_repeats() -> None:
    y = np.repeat(np.arange(4), 20)
    sets = {tuple(draw_support(y, 2, 4, seed=0, repeat=r)) for r in range(20)}
    assert len(sets) > 15


def test_check_shots_names_smallest_class() -> None:
    y = np.repeat([0, 1], [10, 3])
    check_shots([1, 3, ALL], y, ["nevus", "melanoma"])
    with pytest.raises(UsageError, match="'melanoma' has only 3"):
        check_shots([5], y, ["nevus", "melanoma"])
    with pytest.raises(UsageError):
        draw_support(y, 4, 2)
