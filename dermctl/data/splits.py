"""Seeded, stratified, grouped train/val/test splits.

Rules (the same for every data set):

* A group (patient, lesion, case, or a cluster of near-duplicate images) never straddles two splits.
  Rows without a group are their own group.
* When the publisher fixes a test set (rows marked "test"), it is kept as published and only train/val
  are drawn from the rest; a group with any published-test row goes to test as a whole.
* Otherwise `test_fraction` of the images (counted in images, chosen as whole groups) becomes the test
  split, then `val_fraction` of the remainder becomes val (85/15 by default, as in Groger et al. 2023).
* Stratified approximately by label at the group level: each group votes with its majority label, and
  each class contributes its own share of groups. A class with enough groups (>= 3 for
  train/val/test) appears in every split.
* Unlabelled corpora (`with_test=False`): only a small random val split for early stopping; no test split
  is made, but a publisher's fixed test set (derm7pt's test_indexes) is kept as test.
* Deterministic: the same rows, labels, groups and seed give the same split, whatever the row order.

`split_shortfalls` says which classes the split could not place in every split that was asked for (a class
with fewer groups than splits cannot be); ingest refuses such a split instead of writing it.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from dermctl.errors import UsageError


@dataclass(frozen=True)
class Shortfall:
    """A class that has no image in a split that was asked for (see `split_shortfalls`)."""

    label: str
    images: int  # its images in the rows the splitter divided (the publisher's test set aside)
    groups: int  # the groups those images lie in
    missing: tuple[str, ...]  # requested splits without any of its images, in train/val/test order
    requested: tuple[str, ...]  # the splits asked for: train, then val and/or test


@dataclass(frozen=True)
class _Group:
    key: str
    label: str
    rows: tuple[int, ...]


def assign_splits(
    labels: Sequence[str],
    groups: Sequence[str],
    keys: Sequence[str],
    fixed: Sequence[str] | None = None,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    seed: int = 0,
    with_test: bool = True,
) -> list[str]:
    """Split name ("train" | "val" | "test") for every row.

    labels: class per row ("" when unlabelled); groups: group key per row ("" = own group);
    keys: a stable unique id per row (e.g. its path), used for ungrouped rows and for ordering so that
    the split does not depend on row order; fixed: "test" for rows in the publisher's test set.
    """
    n = len(labels)
    if not (len(groups) == len(keys) == n and (fixed is None or len(fixed) == n)):
        raise ValueError("labels, groups, keys and fixed must have one entry per row")
    for option, value in (("--test-fraction", test_fraction), ("--val-fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise UsageError(f"{option}: {value} is not in [0, 1)")
    rng = random.Random(seed)
    all_groups = _make_groups(labels, groups, keys)
    out = ["train"] * n
    fixed_test = {i for i in range(n) if fixed is not None and fixed[i] == "test"}
    if fixed_test:
        # The publisher's test set is kept as test even in a pretraining corpus (derm7pt): it never trains.
        test = [g for g in all_groups if any(i in fixed_test for i in g.rows)]
        rest = [g for g in all_groups if not any(i in fixed_test for i in g.rows)]
    elif with_test and test_fraction > 0:
        keep_for_later = 2 if val_fraction > 0 else 1
        test, rest = _holdout(all_groups, test_fraction, rng, keep_at_least=keep_for_later)
    else:
        test, rest = [], all_groups
    val, _train = _holdout(rest, val_fraction, rng, keep_at_least=1) if val_fraction > 0 else ([], rest)
    for split, chosen in (("test", test), ("val", val)):
        for g in chosen:
            for i in g.rows:
                out[i] = split
    return out


def _make_groups(labels: Sequence[str], groups: Sequence[str], keys: Sequence[str]) -> list[_Group]:
    members: dict[str, list[int]] = defaultdict(list)
    for i, (g, k) in enumerate(zip(groups, keys, strict=True)):
        # The prefixes keep a row key from ever colliding with a real group name.
        members[f"g:{g}" if g else f"r:{k}"].append(i)
    out = []
    for key in sorted(members):
        rows = tuple(sorted(members[key], key=lambda i: keys[i]))
        votes = Counter(labels[i] for i in rows)
        top = max(votes.values())
        label = min(lab for lab, c in votes.items() if c == top)  # ties -> alphabetical, deterministic
        out.append(_Group(key=key, label=label, rows=rows))
    return out


def _holdout(
    pool: list[_Group], fraction: float, rng: random.Random, keep_at_least: int
) -> tuple[list[_Group], list[_Group]]:
    """Pick about `fraction` of the images of each class (as whole groups); returns (held out, rest)."""
    by_label: dict[str, list[_Group]] = defaultdict(list)
    for g in pool:
        by_label[g.label].append(g)
    held: list[_Group] = []
    rest: list[_Group] = []
    for label in sorted(by_label):
        groups = list(by_label[label])
        rng.shuffle(groups)
        target = fraction * sum(len(g.rows) for g in groups)
        taken: list[_Group] = []
        left: list[_Group] = []
        count = 0
        for g in groups:
            # Take a group when that brings the held-out count closer to the target.
            if abs(count + len(g.rows) - target) < abs(count - target):
                taken.append(g)
                count += len(g.rows)
            else:
                left.append(g)
        # Every class with enough groups appears on both sides (and leaves enough for later splits).
        if not taken and len(groups) > keep_at_least and fraction > 0:
            smallest = min(left, key=lambda g: len(g.rows))
            left.remove(smallest)
            taken.append(smallest)
        while len(left) < keep_at_least and len(taken) > 1:
            smallest = min(taken, key=lambda g: len(g.rows))
            taken.remove(smallest)
            left.append(smallest)
        held.extend(taken)
        rest.extend(left)
    return held, rest


def requested_splits(
    has_fixed_test: bool, *, test_fraction: float, val_fraction: float, with_test: bool
) -> tuple[str, ...]:
    """The splits `assign_splits` draws from the rows it divides (a publisher's test set is not drawn)."""
    drawn_test = with_test and not has_fixed_test and test_fraction > 0
    return ("train",) + (("val",) if val_fraction > 0 else ()) + (("test",) if drawn_test else ())


def split_shortfalls(
    labels: Sequence[str],
    groups: Sequence[str],
    keys: Sequence[str],
    splits: Sequence[str],
    fixed: Sequence[str] | None = None,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.15,
    with_test: bool = True,
) -> list[Shortfall]:
    """Classes missing from a split they were expected in, sorted by label; [] when every class is placed.

    Only labelled tasks are checked (`with_test=True`; an unlabelled corpus has no classes). The rows
    checked are those the splitter divided: all rows, or, when the publisher fixes a test set, the rows
    outside it (the published test set is kept as published, whatever classes it holds). A class is
    expected in every requested split (`requested_splits`); since a group never straddles splits, a class
    in fewer groups than that can never be, and `assign_splits` always places one with at least that many
    groups (when they vote for it).
    """
    if not with_test:
        return []
    has_fixed_test = fixed is not None and any(f == "test" for f in fixed)
    requested = requested_splits(
        has_fixed_test, test_fraction=test_fraction, val_fraction=val_fraction, with_test=with_test
    )
    images: Counter[str] = Counter()
    members: dict[str, set[str]] = defaultdict(set)
    placed: dict[str, set[str]] = defaultdict(set)
    for label, group, key, split in zip(labels, groups, keys, splits, strict=True):
        # With a published test set, every "test" row is in it or in a group that touches it.
        if not label or (has_fixed_test and split == "test"):
            continue
        images[label] += 1
        members[label].add(f"g:{group}" if group else f"r:{key}")
        placed[label].add(split)
    out = []
    for label in sorted(images):
        missing = tuple(s for s in requested if s not in placed[label])
        if missing:
            out.append(Shortfall(label, images[label], len(members[label]), missing, requested))
    return out
