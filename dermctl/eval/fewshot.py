"""Seeded, stratified few-shot support sets (Figure 1 of Gröger et al.: macro-F1 against the number of
labelled samples per class).

A support set with `shots` = s holds s training images of every class, drawn without replacement.
"all" means the whole training split (one repeat: there is nothing to draw). Each draw is seeded by
(seed, shots, repeat) alone, so adding a shot count or more repeats never changes the other sets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dermctl.errors import UsageError

ALL = "all"
Shots = int | str  # a positive int or "all"


def parse_shots(value: str | None, option: str = "--shots") -> list[Shots]:
    """ "1,5,10,all" -> [1, 5, 10, "all"] (sorted, de-duplicated, "all" last)."""
    if value is None or not value.strip():
        raise UsageError(f"{option}: empty value (expected comma-separated positive integers and/or 'all')")
    out: list[Shots] = []
    for raw in value.split(","):
        item = raw.strip().lower()
        if item == ALL:
            out.append(ALL)
            continue
        try:
            n = int(item)
        except ValueError:
            raise UsageError(
                f"{option}: {raw.strip()!r} in {value!r} is not a positive integer or 'all'"
            ) from None
        if n < 1:
            raise UsageError(f"{option}: {n} in {value!r} must be at least 1 image per class")
        out.append(n)
    ints = sorted({s for s in out if s != ALL})
    return [*ints, *([ALL] if ALL in out else [])]


def check_shots(
    shots: Sequence[Shots], train_labels: Any, class_names: Sequence[str], option: str = "--shots"
) -> None:
    """Every shot count must fit the smallest training class; the error names that class."""
    y = np.asarray(train_labels, dtype=np.int64)
    counts = np.bincount(y[y >= 0], minlength=len(class_names))
    smallest = int(np.argmin(counts))
    for s in shots:
        if s != ALL and int(s) > counts[smallest]:
            raise UsageError(
                f"{option}: {s} shots per class but training class {class_names[smallest]!r} has only "
                f"{counts[smallest]} images (use at most {counts[smallest]}, or 'all')"
            )


def support_rng(seed: int, shots: Shots, repeat: int) -> np.random.Generator:
    """The generator of one draw; independent of every other (shots, repeat)."""
    s = 0 if shots == ALL else int(shots)
    return np.random.default_rng([int(seed), s, int(repeat)])


def class_members(train_labels: Any, n_classes: int) -> list[np.ndarray]:
    """Indices of each class's training rows (reuse across many draws)."""
    y = np.asarray(train_labels, dtype=np.int64)
    order = np.argsort(y, kind="stable")
    bounds = np.searchsorted(y[order], np.arange(n_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_classes)]


def draw_support(
    train_labels: Any,
    shots: Shots,
    n_classes: int,
    seed: int = 0,
    repeat: int = 0,
    members: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Indices (into the training arrays) of a stratified support set, sorted.

    `shots` images of each class 0..n_classes-1 drawn without replacement; "all" returns every index.
    `members` (from `class_members`) saves regrouping the labels on every draw.
    Raises UsageError when a class has fewer than `shots` images.
    """
    y = np.asarray(train_labels, dtype=np.int64)
    if shots == ALL:
        return np.arange(y.size)
    s = int(shots)
    if s < 1:
        raise UsageError(f"--shots: {s} must be at least 1")
    rng = support_rng(seed, s, repeat)
    groups = members if members is not None else class_members(y, n_classes)
    picked = []
    for c, group in enumerate(groups):
        if group.size < s:
            raise UsageError(
                f"--shots: {s} shots per class but class {c} has only {group.size} training images"
            )
        picked.append(rng.choice(group, size=s, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def repeats_for(shots: Shots, repeats: int) -> int:
    """'all' is one deterministic set; other shot counts are drawn `repeats` times."""
    return 1 if shots == ALL else int(repeats)


def mean_ci(values: Sequence[float], level: float = 0.95) -> list[float]:
    """t-interval of the mean of `values` (repeats of a few-shot draw); [v, v] for one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [float("nan"), float("nan")]
    if v.size == 1:
        return [float(v[0]), float(v[0])]
    from scipy import stats  # here: scipy.stats costs ~1 s to import, and pretraining never needs it

    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return [float(v.mean() - half), float(v.mean() + half)]


def curve_point(
    shots: Shots, values: Sequence[float], k: Any, ci: list[float] | None = None
) -> dict[str, Any]:
    """One point of a few-shot curve as stored in result files."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "shots": shots,
        "repeats": int(v.size),
        "macro_f1_mean": float(v.mean()),
        "macro_f1_std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "macro_f1_ci": ci if ci is not None else mean_ci(v),
        "values": [float(x) for x in v],
        "k": k,
    }
