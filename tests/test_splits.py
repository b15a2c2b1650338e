"""Grouped, stratified, seeded splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from dermctl.data.splits import assign_splits
from dermctl.errors import UsageError


def _data(seed: int, n: int = 600, grouped: float = 0.7) -> tuple[list[str], list[str], list[str]]:
    rnd = random.Random(seed)
    labels, groups = [], []
    for _ in range(n):
        label = rnd.choice("aaaabbbccd")
        labels.append(label)
        # patients mostly hold one class, as in HAM10000 (lesion_id -> one diagnosis)
        groups.append(f"{label}{rnd.randrange(n // 3)}" if rnd.random() < grouped else "")
    return labels, groups, [f"img_{i:04d}.jpg" for i in range(n)]


def _groups_straddle(groups: list[str], splits: list[str]) -> set[str]:
    sides: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        if g:
            sides[g].add(s)
    return {g for g, s in sides.items() if len(s) > 1}


def test_no_group_on_two_sides_across_seeds() -> None:
    for seed in range(25):
        labels, groups, keys = _data(seed)
        # mixed-label groups too
        groups = [g if i % 7 else "shared" for i, g in enumerate(groups)]
        splits = assign_splits(labels, groups, keys, seed=seed)
        assert not _groups_straddle(groups, splits)


def test_fractions_and_stratification() -> None:
    labels, groups, keys = _data(1, n=2000)
    splits = assign_splits(labels, groups, keys, test_fraction=0.2, val_fraction=0.15, seed=0)
    c = Counter(splits)
    assert abs(c["test"] / 2000 - 0.2) < 0.03
    assert abs(c["val"] / (c["train"] + c["val"]) - 0.15) < 0.03
    per = Counter(zip(labels, splits, strict=True))
    for label in set(labels):
        total = labels.count(label)
        assert abs(per[(label, "test")] / total - 0.2) < 0.06, label


def test_every_class_with_enough_groups_in_every_split() -> None:
    labels = ["rare"] * 3 + ["common"] * 97
    groups = [f"g{i}" for i in range(100)]
    keys = [f"k{i}" for i in range(100)]
    for seed in range(10):
        splits = assign_splits(labels, groups, keys, seed=seed)
        rare = {s for s, lab in zip(splits, labels, strict=True) if lab == "rare"}
        assert rare == {"train", "val", "test"}


def test_deterministic_and_order_independent() -> None:
    labels, groups, keys = _data(3)
    a = assign_splits(labels, groups, keys, seed=7)
    assert a == assign_splits(labels, groups, keys, seed=7)
    assert a != assign_splits(labels, groups, keys, seed=8)
    order = list(range(len(labels)))
    random.Random(0).shuffle(order)
    shuffled = assign_splits(
        [labels[i] for i in order], [groups[i] for i in order], [keys[i] for i in order], seed=7
    )
    assert {keys[i]: s for i, s in zip(order, shuffled, strict=True)} == dict(zip(keys, a, strict=True))


def test_publisher_test_split_is_kept() -> None:
    labels, groups, keys = _data(4)
    fixed = ["test" if i % 5 == 0 else "" for i in range(len(labels))]
    splits = assign_splits(labels, groups, keys, fixed, seed=0)
    assert all(s == "test" for s, f in zip(splits, fixed, strict=True) if f == "test")
    # only groups touching the official test set join it
    official_groups = {g for g, f in zip(groups, fixed, strict=True) if f == "test" and g}
    for g, f, s in zip(groups, fixed, splits, strict=True):
        if s == "test" and f != "test":
            assert g in official_groups
    assert not _groups_straddle(groups, splits)
    assert "val" in splits and "train" in splits


def test_unlabelled_corpus_gets_val_only() -> None:
    n = 400
    splits = assign_splits(
        [""] * n, [""] * n, [f"k{i}" for i in range(n)], with_test=False, val_fraction=0.15
    )
    c = Counter(splits)
    assert c["test"] == 0 and abs(c["val"] / n - 0.15) < 0.02


def test_bad_fraction_is_usage_error() -> None:
    with pytest.raises(UsageError, match="--test-fraction"):
        assign_splits(["a"], [""], ["k"], test_fraction=1.5)
