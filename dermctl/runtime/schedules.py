"""Per-iteration schedules, precomputed as arrays (as the official DINO code does): simple to test."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: float = 0,
    warmup_start: float = 0.0,
) -> np.ndarray:
    """`epochs * iters_per_epoch` values, exactly as the official DINO/iBOT `utils.cosine_scheduler`:
    linear warm-up from `warmup_start` to `base` over `warmup_epochs` (np.linspace, both ends included),
    then `final + 0.5 * (base - final) * (1 + cos(pi * i / n))` for i = 0 .. n-1 over the n remaining
    iterations (so the last value approaches, but does not reach, `final`)."""
    total = int(epochs * iters_per_epoch)
    warm = min(int(warmup_epochs * iters_per_epoch), total)
    warmup = np.linspace(warmup_start, base, warm) if warm > 0 else np.array([])
    iters = np.arange(total - warm)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    out = np.concatenate([warmup, cosine])
    assert len(out) == total
    return out


def constant_schedule(
    value: float, epochs: int, iters_per_epoch: int, warmup_epochs: float = 0
) -> np.ndarray:
    """A constant value, optionally reached by a linear warm-up from 0."""
    return cosine_schedule(value, value, epochs, iters_per_epoch, warmup_epochs, 0.0)


def warmup_then_constant(
    start: float, end: float, warmup_epochs: int, epochs: int, iters_per_epoch: int = 1
) -> np.ndarray:
    """Linear from `start` to `end` over `warmup_epochs`, then `end` (DINO's teacher temperature, per epoch
    when iters_per_epoch is 1)."""
    warm = min(warmup_epochs, epochs) * iters_per_epoch
    return np.concatenate([np.linspace(start, end, warm), np.full(epochs * iters_per_epoch - warm, end)])
