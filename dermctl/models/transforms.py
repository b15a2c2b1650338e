"""How to feed images to a backbone for evaluation: one transform, beside the backbone contract.

Every number dermctl computes on frozen or fine-tuned features goes through `eval_transform`: `embed`
(and so knn, probe and the report), the fine-tuning val and test passes, and the pretraining monitor.
The rule is DINO's evaluation preprocessing: resize the shorter side to image_size / 0.875 (bicubic),
centre-crop image_size, scale to [0, 1], normalise with the backbone's mean and std, keep the
backbone's channels (green only for ColorMe encoders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dermctl.models.backbone import BackboneMeta, select_channels

CROP_RATIO = 0.875  # official DINO eval_linear.py / eval_knn.py: Resize(256), CenterCrop(224)


def normaliser(
    mean: Sequence[float], std: Sequence[float], channels: str = "rgb"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(3, H, W) tensor in [0, 1] -> the backbone's channels, normalised."""
    m, s = list(mean), list(std)
    if channels == "green" and len(m) == 3:
        m, s = m[1:2], s[1:2]
    m_t, s_t = torch.tensor(m).view(-1, 1, 1), torch.tensor(s).view(-1, 1, 1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return (select_channels(x.unsqueeze(0), channels)[0] - m_t) / s_t

    return apply


def eval_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], channels: str = "rgb"
) -> Callable[[Any], torch.Tensor]:
    """PIL image -> normalised (C, image_size, image_size) tensor (C = 1 for green-only backbones)."""
    from torchvision import transforms

    resize = transforms.Compose(
        [
            transforms.Resize(
                int(round(image_size / CROP_RATIO)), interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
        ]
    )
    finish = normaliser(mean, std, channels)

    def apply(im: Any) -> torch.Tensor:
        return finish(resize(im))

    return apply


def backbone_eval_transform(
    meta: BackboneMeta, image_size: int | None = None
) -> Callable[[Any], torch.Tensor]:
    """`eval_transform` with the backbone's own statistics and channels (and input size by default)."""
    return eval_transform(image_size or meta.input_size, meta.mean, meta.std, meta.channels)
