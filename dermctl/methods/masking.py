"""iBOT's patch masks for masked image modelling (Zhou et al. 2022, Sec. 3.2 and App. C).

Block-wise masking follows BEiT (Bao et al. 2022, Alg. 1) as adapted in iBOT's `ImageFolderMask`: blocks
of area >= (min(h, w) // 3)^2 patches and aspect ratio in (0.3, 1/0.3) are added until the wanted number of
patches is masked. Per crop, the prediction ratio is drawn uniformly from pred_ratio ± pred_ratio_var
(0.3 ± 0.2 = [0.1, 0.5]) and used only with probability `mask_prob` (0.5); otherwise the crop stays
unmasked. This is the official ViT-S recipe `--pred_ratio 0 0.3 --pred_ratio_var 0 0.2`, where one of the
two ratios is picked at random.

Randomness comes from Python's `random` module (the global RNG unless an `rng` is given): masks are made in
the data transform, so a seeded data loader (torch seeds `random` in every worker) reproduces them.

Example:
    >>> gen = BlockMaskGenerator(pred_ratio=0.3, pred_ratio_var=0.2, mask_prob=0.5)
    >>> mask = gen(14, 14)          # numpy bool array (14, 14), True = masked patch
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from dermctl.errors import UsageError

PRED_SHAPES = ("block", "rand")


def block_mask(
    h: int,
    w: int,
    num_masked: float,
    aspect_ratio: Sequence[float] = (0.3, 1 / 0.3),
    rng: random.Random | None = None,
) -> np.ndarray:
    """A (h, w) bool mask made of rectangular blocks covering about `num_masked` patches (BEiT/iBOT).

    Blocks are drawn with area U(min_area, remaining) and log-uniform aspect ratio, must be strictly
    smaller than the grid, and must add at least one new patch without exceeding the remaining budget;
    after 10 failed draws in a row the mask is returned as it is (so it may cover fewer patches).
    """
    r = rng or random
    mask = np.zeros((h, w), dtype=bool)
    log_ar = (math.log(aspect_ratio[0]), math.log(aspect_ratio[1]))
    min_area = (min(h, w) // 3) ** 2
    count = 0
    while count < num_masked:
        budget = num_masked - count
        delta = 0
        for _attempt in range(10):
            target_area = r.uniform(min_area, budget)
            ar = math.exp(r.uniform(*log_ar))
            bh = int(round(math.sqrt(target_area * ar)))
            bw = int(round(math.sqrt(target_area / ar)))
            if bw < w and bh < h:
                top = r.randint(0, h - bh)
                left = r.randint(0, w - bw)
                block = mask[top : top + bh, left : left + bw]
                new = bh * bw - int(block.sum())
                if 0 < new <= budget:
                    block[...] = True
                    delta = new
            if delta > 0:
                break
        if delta == 0:
            break
        count += delta
    return mask


def random_mask(h: int, w: int, num_masked: float, rng: random.Random | None = None) -> np.ndarray:
    """`int(num_masked)` patches masked uniformly at random (iBOT's `pred_shape rand`)."""
    r = rng or random
    flat = np.zeros(h * w, dtype=bool)
    flat[r.sample(range(h * w), min(int(num_masked), h * w))] = True
    return flat.reshape(h, w)


class BlockMaskGenerator:
    """Draws one iBOT mask per call: ratio ~ U(pred_ratio ± pred_ratio_var) with probability `mask_prob`,
    else 0 (no masking); then a block-wise (or random) mask of ratio * h * w patches."""

    def __init__(
        self,
        pred_ratio: float = 0.3,
        pred_ratio_var: float = 0.2,
        mask_prob: float = 0.5,
        aspect_ratio: Sequence[float] = (0.3, 1 / 0.3),
        shape: str = "block",
    ) -> None:
        if not 0 <= pred_ratio - pred_ratio_var <= pred_ratio + pred_ratio_var <= 1 or pred_ratio_var < 0:
            raise UsageError(
                f"config pred_ratio/pred_ratio_var: {pred_ratio} ± {pred_ratio_var} must stay within [0, 1]"
            )
        if not 0 <= mask_prob <= 1:
            raise UsageError(f"config mask_prob: {mask_prob!r} is not a probability in [0, 1]")
        if shape not in PRED_SHAPES:
            raise UsageError(f"config pred_shape: {shape!r} is not one of {', '.join(PRED_SHAPES)}")
        try:
            lo, hi = (float(a) for a in aspect_ratio)
        except (TypeError, ValueError):
            raise UsageError(f"config pred_aspect_ratio: {aspect_ratio!r} is not a pair of numbers") from None
        if not 0 < lo <= hi:
            raise UsageError(f"config pred_aspect_ratio: {aspect_ratio!r} must satisfy 0 < min <= max")
        self.pred_ratio, self.pred_ratio_var, self.mask_prob = pred_ratio, pred_ratio_var, mask_prob
        self.aspect_ratio, self.shape = (lo, hi), shape

    def draw_ratio(self, rng: random.Random | None = None) -> float:
        """The masking ratio of one crop: 0 with probability 1 - mask_prob."""
        r = rng or random
        ratio = (
            r.uniform(self.pred_ratio - self.pred_ratio_var, self.pred_ratio + self.pred_ratio_var)
            if self.pred_ratio_var > 0
            else self.pred_ratio
        )
        return ratio if r.random() < self.mask_prob else 0.0

    def __call__(self, h: int, w: int, rng: random.Random | None = None) -> np.ndarray:
        num = self.draw_ratio(rng) * h * w
        if self.shape == "rand":
            return random_mask(h, w, num, rng)
        return block_mask(h, w, num, self.aspect_ratio, rng)

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(ratio {self.pred_ratio}±{self.pred_ratio_var} with p {self.mask_prob}, "
            f"shape {self.shape}, aspect {self.aspect_ratio})"
        )
