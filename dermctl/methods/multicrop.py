"""The multi-crop view policy of DINO and iBOT (Caron et al. 2021, Sec. 3.1; Zhou et al. 2022, Sec. 4).

Each image gives `n_global` large crops (seen by student and teacher) and `n_local` small crops (student
only), following `DataAugmentationDINO` / `DataAugmentationiBOT` of the official code:

    every view      RandomResizedCrop (BICUBIC), horizontal flip p 0.5,
                    colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, ToTensor, ImageNet normalisation
    global view 1   Gaussian blur p 1.0
    other globals   Gaussian blur p 0.1, solarisation p 0.2
    local views     Gaussian blur p 0.5

Example:
    >>> views = MultiCrop(global_size=224, local_size=96, n_local=8)(pil_image)
    >>> [v.shape for v in views["globals"]]   # 2 x (3, 224, 224); views["locals"]: 8 x (3, 96, 96)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dermctl.errors import UsageError
from dermctl.methods.augment import IMAGENET_MEAN, IMAGENET_STD
from dermctl.methods.photometric import PhotometricPolicy, ViewPolicy, ViewSet


def _scale(key: str, value: Any) -> tuple[float, float]:
    """A crop-scale pair (min, max) with 0 < min <= max <= 1, or a UsageError naming the config key."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(
            f"config {key}: {value!r} is not a pair of numbers (expected e.g. [0.4, 1.0])"
        ) from None
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"config {key}: {value!r} must satisfy 0 < min <= max <= 1")
    return lo, hi


def _count(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"config {key}: {value!r} is not an integer >= {minimum}")
    return value


class MultiCrop(ViewSet):
    """PIL RGB image -> {"globals": [n_global tensors], "locals": [n_local tensors]} (no "locals" key
    when n_local is 0, so batches collate with torch's default_collate).

    The first global view is blurred always; the others get blur p 0.1 and solarisation p 0.2 (DINO's
    asymmetric pair, BYOL's recipe). Randomness comes from Python's and torch's global RNGs, which the
    data loader seeds per worker. With `device_photometric` (config `gpu_augment`) the views are uint8
    crops plus "globals_photo" / "locals_photo" parameters, finished batched on the device by
    `dermctl.methods.photometric.augment_batch` (same draws, same policy).
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        n_global: int = 2,
        n_local: int = 8,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device_photometric: bool = False,
    ) -> None:
        self.global_size = _count("image_size", global_size, 1)
        self.local_size = _count("local_crop_size", local_size, 1)
        self.global_scale = _scale("global_crops_scale", global_scale)
        self.local_scale = _scale("local_crops_scale", local_scale)
        self.n_global = _count("global_crops_number", n_global, 1)
        self.n_local = _count("local_crops_number", n_local, 0)

        def colour(**kw: float) -> PhotometricPolicy:  # jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2
            return PhotometricPolicy(0.4, 0.4, 0.2, 0.1, p_jitter=0.8, p_gray=0.2, **kw)

        first = ViewPolicy(self.global_size, self.global_scale, colour(p_blur=1.0))
        other = ViewPolicy(self.global_size, self.global_scale, colour(p_blur=0.1, p_solarize=0.2))
        local = ViewPolicy(self.local_size, self.local_scale, colour(p_blur=0.5))
        super().__init__(
            {"globals": [first] + [other] * (self.n_global - 1), "locals": [local] * self.n_local},
            mean,
            std,
            device_photometric,
        )
        self.global_crop1 = self.pil(first)
        self.global_crop2 = self.pil(other)
        self.local_crop = self.pil(local)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MultiCrop:
        """Built from a DINO/iBOT config (keys image_size, local_crop_size, global_crops_scale,
        local_crops_scale, global_crops_number, local_crops_number)."""
        return cls(
            global_size=cfg["image_size"],
            local_size=cfg["local_crop_size"],
            global_scale=cfg["global_crops_scale"],
            local_scale=cfg["local_crops_scale"],
            n_global=cfg.get("global_crops_number", 2),
            n_local=cfg["local_crops_number"],
        )

    def __repr__(self) -> str:
        return (
            f"MultiCrop({self.n_global} x {self.global_size}px scale {self.global_scale}, "
            f"{self.n_local} x {self.local_size}px scale {self.local_scale})"
        )
