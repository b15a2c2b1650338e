"""Grouped, stratified, seeded splits."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from dermctl.data.splits import Shortfall, assign_splits, requested_splits, split_shortfalls
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


def _tiny_classes() -> tuple[list[str], list[str], list[str]]:
    """'common' (60 images, own groups) and classes too small for three splits, and one just big enough."""
    rows = [("common", f"c{i}") for i in range(60)]
    rows += [("one", "")]  # a single image
    rows += [("pair", "p1"), ("pair", "p2")]  # two groups
    rows += [("lesion", "L")] * 4  # four images of one lesion
    rows += [("three", "t1"), ("three", "t2"), ("three", "t3"), ("three", "t3")]
    labels = [lab for lab, _ in rows]
    groups = [g for _, g in rows]
    return labels, groups, [f"k{i:03d}" for i in range(len(rows))]


def test_shortfalls_name_every_class_with_fewer_groups_than_splits() -> None:
    labels, groups, keys = _tiny_classes()
    for seed in range(10):
        splits = assign_splits(labels, groups, keys, seed=seed)
        short = {s.label: s for s in split_shortfalls(labels, groups, keys, splits)}
        assert sorted(short) == ["lesion", "one", "pair"], seed
        assert (short["one"].images, short["one"].groups) == (1, 1)
        assert (short["pair"].images, short["pair"].groups) == (2, 2)
        assert (short["lesion"].images, short["lesion"].groups) == (4, 1)
        assert short["one"].missing == ("val", "test") and short["lesion"].missing == ("val", "test")
        assert len(short["pair"].missing) == 1 and short["pair"].requested == ("train", "val", "test")
        for s in short.values():  # what it reports is what the split did
            placed = {sp for sp, lab in zip(splits, labels, strict=True) if lab == s.label}
            assert placed.isdisjoint(s.missing) and placed | set(s.missing) == {"train", "val", "test"}


def test_a_class_with_as_many_groups_as_splits_is_never_short() -> None:
    # The guarantee the refusal rests on: only classes with too few groups are refused, and those always.
    refused = placed = 0
    for seed in range(20):
        rnd = random.Random(seed)
        labels, groups = [], []
        for c in range(12):  # small classes of 1-6 groups of 1-3 images, one class per group
            for g in range(rnd.randint(1, 6)):
                for _ in range(rnd.randint(1, 3)):
                    labels.append(f"c{c}")
                    groups.append(f"c{c}g{g}")
        keys = [f"k{i:03d}" for i in range(len(labels))]
        for test_fraction, val_fraction in ((0.2, 0.15), (0.3, 0.0), (0.0, 0.1), (0.05, 0.05)):
            kw = {"test_fraction": test_fraction, "val_fraction": val_fraction}
            splits = assign_splits(labels, groups, keys, seed=seed, **kw)
            short = {s.label for s in split_shortfalls(labels, groups, keys, splits, **kw)}
            needed = len(requested_splits(False, with_test=True, **kw))
            for c in set(labels):
                n_groups = len({g for g, lab in zip(groups, labels, strict=True) if lab == c})
                assert (c in short) == (n_groups < needed), (seed, kw, c)
                refused += c in short
                placed += c not in short
    assert refused > 50 and placed > 50


def test_shortfalls_follow_the_splits_asked_for() -> None:
    labels, groups, keys = _tiny_classes()
    # only train asked for: nothing can be missing
    splits = assign_splits(labels, groups, keys, test_fraction=0.0, val_fraction=0.0)
    assert split_shortfalls(labels, groups, keys, splits, test_fraction=0.0, val_fraction=0.0) == []
    # train/val: two groups are enough
    splits = assign_splits(labels, groups, keys, test_fraction=0.0)
    short = split_shortfalls(labels, groups, keys, splits, test_fraction=0.0)
    assert [(s.label, s.missing, s.requested) for s in short] == [
        ("lesion", ("val",), ("train", "val")),
        ("one", ("val",), ("train", "val")),
    ]
    # an unlabelled corpus has no classes to lose
    n = 50
    corpus = assign_splits([""] * n, [""] * n, [f"k{i}" for i in range(n)], with_test=False)
    assert split_shortfalls([""] * n, [""] * n, [f"k{i}" for i in range(n)], corpus, with_test=False) == []


def test_shortfalls_leave_the_publishers_test_set_alone() -> None:
    labels = ["common"] * 20 + ["only_test", "only_test", "rare", "rare"]
    groups = [f"g{i}" for i in range(20)] + ["", "", "r", ""]
    keys = [f"k{i:02d}" for i in range(len(labels))]
    fixed = [""] * 20 + ["test", "test", "test", ""]
    splits = assign_splits(labels, groups, keys, fixed)
    assert requested_splits(True, test_fraction=0.2, val_fraction=0.15, with_test=True) == ("train", "val")
    # 'only_test' is all in the published test set; 'rare' has one image outside it: no val for it
    assert split_shortfalls(labels, groups, keys, splits, fixed) == [
        Shortfall("rare", images=1, groups=1, missing=("val",), requested=("train", "val"))
    ]
