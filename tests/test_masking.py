"""iBOT's block-wise mask generator: ratios, block shape, masking probability, determinism."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dermctl.errors import UsageError
from dermctl.methods.masking import BlockMaskGenerator, block_mask, random_mask


def _rectangles_cover(mask: np.ndarray) -> bool:
    """True when the mask equals the filled bounding box of its masked patches (a single rectangle)."""
    rows, cols = np.nonzero(mask)
    box = np.zeros_like(mask)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    return bool((box == mask).all())


def test_ratio_stays_within_pred_ratio_range():
    random.seed(0)
    gen = BlockMaskGenerator(pred_ratio=0.3, pred_ratio_var=0.2, mask_prob=1.0)
    fractions = np.array([gen(14, 14).mean() for _ in range(300)])
    assert fractions.max() <= 0.5  # blocks never exceed the drawn budget
    assert fractions.min() > 0.0  # with mask_prob 1 every crop is masked
    assert 0.25 < fractions.mean() < 0.35  # ratio ~ U[0.1, 0.5], blocks fill ~97% of the budget
    assert np.mean(fractions >= 0.1 * 0.6) > 0.97


def test_block_mask_never_exceeds_and_nearly_reaches_the_budget():
    for seed in range(100):
        rng = random.Random(seed)
        target = rng.uniform(0.1, 0.5) * 196
        m = block_mask(14, 14, target, rng=rng)
        assert m.dtype == bool and m.shape == (14, 14)
        assert 0.5 * target <= m.sum() <= target


def test_blocks_follow_area_and_aspect_ratio():
    # aspect ratio fixed to 1 and a budget of exactly the minimum block area ((14 // 3)^2 = 16):
    # the only block that fits is one 4 x 4 square
    for seed in range(20):
        m = block_mask(14, 14, 16, aspect_ratio=(1.0, 1.0), rng=random.Random(seed))
        assert m.sum() == 16 and _rectangles_cover(m)
        rows, cols = np.nonzero(m)
        assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
    # aspect ratio 3 (tall): the first block is 7 x 2 (sqrt(16 * 3) ~ 7 rows, sqrt(16 / 3) ~ 2 columns)
    m = block_mask(14, 14, 14, aspect_ratio=(3.0, 3.0), rng=random.Random(0))
    rows, cols = np.nonzero(m)
    assert m.sum() == 14 and rows.max() - rows.min() == 6 and cols.max() - cols.min() == 1


def test_masks_are_blocks_not_scattered_patches():
    def neighbour_share(mask: np.ndarray) -> float:
        p = np.pad(mask, 1)
        nb = p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
        return float((mask & nb).sum() / max(mask.sum(), 1))

    blocks = [neighbour_share(block_mask(14, 14, 40, rng=random.Random(s))) for s in range(50)]
    rand = [neighbour_share(random_mask(14, 14, 40, rng=random.Random(s))) for s in range(50)]
    assert np.mean(blocks) > 0.9 and np.mean(rand) < 0.7


def test_mask_probability_leaves_about_half_the_crops_unmasked():
    random.seed(1)
    gen = BlockMaskGenerator(pred_ratio=0.3, pred_ratio_var=0.2, mask_prob=0.5)
    empty = np.mean([not gen(14, 14).any() for _ in range(400)])
    assert 0.4 < empty < 0.6
    random.seed(1)
    assert not any(BlockMaskGenerator(mask_prob=0.0)(14, 14).any() for _ in range(20))


def test_draw_ratio_range():
    rng = random.Random(0)
    gen = BlockMaskGenerator(pred_ratio=0.3, pred_ratio_var=0.2, mask_prob=1.0)
    ratios = [gen.draw_ratio(rng) for _ in range(500)]
    assert 0.1 <= min(ratios) < 0.13 and 0.47 < max(ratios) <= 0.5
    assert BlockMaskGenerator(pred_ratio=0.25, pred_ratio_var=0.0, mask_prob=1.0).draw_ratio(rng) == 0.25


def test_deterministic_given_a_seed():
    gen = BlockMaskGenerator(mask_prob=1.0)
    random.seed(7)
    a = [gen(14, 14) for _ in range(5)]
    random.seed(7)
    b = [gen(14, 14) for _ in range(5)]
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    c = gen(14, 14, rng=random.Random(3))
    assert (c == gen(14, 14, rng=random.Random(3))).all()
    assert any(
        (x != y).any() for x, y in zip(a, [gen(14, 14, rng=random.Random(s)) for s in range(5)], strict=True)
    )


def test_random_shape_masks_exact_count():
    gen = BlockMaskGenerator(pred_ratio=0.25, pred_ratio_var=0.0, mask_prob=1.0, shape="rand")
    m = gen(8, 8, rng=random.Random(0))
    assert m.sum() == 16


def test_tiny_grids_work():
    random.seed(0)
    gen = BlockMaskGenerator(pred_ratio=0.5, pred_ratio_var=0.0, mask_prob=1.0)
    for _ in range(20):
        m = gen(2, 2)
        assert m.shape == (2, 2) and m.sum() <= 2


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(pred_ratio=0.9, pred_ratio_var=0.2), "pred_ratio"),
        (dict(mask_prob=1.5), "mask_prob"),
        (dict(shape="ring"), "pred_shape"),
        (dict(aspect_ratio=(3.0, 0.3)), "pred_aspect_ratio"),
    ],
)
def test_bad_settings_are_usage_errors(kwargs, key):
    with pytest.raises(UsageError, match=key):
        BlockMaskGenerator(**kwargs)
