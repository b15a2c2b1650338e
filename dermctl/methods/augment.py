"""Augmentation building blocks shared by the methods' view policies (PIL in, PIL or tensor out).

Follows the official SimCLR / BYOL / DINO code: Gaussian blur with a radius drawn uniformly from
(0.1, 2.0), solarisation at threshold 128, colour jitter applied with a probability, then grayscale.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGaussianBlur:
    """PIL Gaussian blur with probability `p` and radius ~ U(radius_min, radius_max) (DINO's `GaussianBlur`)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


class RandomSolarize:
    """Invert pixels above 128 with probability `p` (DINO's/BYOL's `Solarization`)."""

    def __init__(self, p: float = 0.2, threshold: int = 128) -> None:
        self.p, self.threshold = p, threshold

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return ImageOps.solarize(img, threshold=self.threshold)

    def __repr__(self) -> str:
        return f"RandomSolarize(p={self.p}, threshold={self.threshold})"


def color_distortion(
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
) -> T.Compose:
    """Colour jitter with probability `p_jitter`, then grayscale with probability `p_gray`."""
    return T.Compose(
        [
            T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=p_jitter),
            T.RandomGrayscale(p=p_gray),
        ]
    )


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> T.Compose:
    """PIL -> float tensor in [0, 1] -> normalised."""
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])
