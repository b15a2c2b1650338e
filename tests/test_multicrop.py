"""Multi-crop view policy of DINO / iBOT: view counts, sizes, crop-scale statistics, augmentation params."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T

from dermctl.errors import UsageError
from dermctl.methods.augment import RandomGaussianBlur, RandomSolarize
from dermctl.methods.multicrop import MultiCrop


def _img(size: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (size, size, 3), dtype=np.uint8))


def _coordinate_image(n: int = 256) -> Image.Image:
    """Red = column, green = row: a crop's pixel values reveal which region of the image it covers."""
    x, y = np.meshgrid(np.arange(n), np.arange(n))
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8))


def test_number_and_size_of_views():
    views = MultiCrop(global_size=32, local_size=16, n_local=3)(_img())
    assert len(views["globals"]) == 2 and len(views["locals"]) == 3
    assert all(v.shape == (3, 32, 32) and v.dtype == torch.float32 for v in views["globals"])
    assert all(v.shape == (3, 16, 16) for v in views["locals"])


def test_no_local_key_without_local_crops_and_batches_collate():
    mc = MultiCrop(global_size=24, local_size=8, n_global=3, n_local=0)
    views = mc(_img())
    assert set(views) == {"globals"} and len(views["globals"]) == 3
    batch = default_collate([MultiCrop(32, 16, n_local=2)(_img(seed=i)) for i in range(4)])
    assert [tuple(b.shape) for b in batch["globals"]] == [(4, 3, 32, 32)] * 2
    assert [tuple(b.shape) for b in batch["locals"]] == [(4, 3, 16, 16)] * 2


def test_views_are_normalised_with_imagenet_stats():
    mc = MultiCrop(32, 16, n_local=1)
    for pipe in (mc.global_crop1, mc.global_crop2, mc.local_crop):
        norm = pipe.transforms[-1].transforms
        assert isinstance(norm[0], T.ToTensor) and isinstance(norm[1], T.Normalize)
        assert tuple(norm[1].mean) == (0.485, 0.456, 0.406) and tuple(norm[1].std) == (0.229, 0.224, 0.225)
    grey = Image.new("RGB", (40, 40), (124, 116, 104))  # ~ImageNet mean: jitter/gray/blur keep it near 0
    random.seed(0)
    torch.manual_seed(0)
    assert mc.local_crop(grey).abs().mean() < 0.5


def _pipeline_params(pipe: T.Compose) -> dict:
    out: dict = {}
    for t in pipe.transforms:
        if isinstance(t, T.RandomResizedCrop):
            out["rrc"] = t
        elif isinstance(t, RandomGaussianBlur):
            out["blur"] = t.p
        elif isinstance(t, RandomSolarize):
            out["solarize"] = t.p
        elif isinstance(t, T.Compose):
            out.update(_pipeline_params(t))
        elif isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.ColorJitter):
            j = t.transforms[0]
            out["jitter"] = (t.p, j.brightness, j.contrast, j.saturation, j.hue)
        elif isinstance(t, T.RandomGrayscale):
            out["gray"] = t.p
        elif isinstance(t, T.RandomHorizontalFlip):
            out["flip"] = t.p
    return out


def test_augmentations_follow_the_official_dino_recipe():
    mc = MultiCrop(224, 96, (0.4, 1.0), (0.05, 0.4), n_local=8)
    g1, g2, loc = (_pipeline_params(p) for p in (mc.global_crop1, mc.global_crop2, mc.local_crop))
    for params in (g1, g2, loc):
        assert params["flip"] == 0.5 and params["gray"] == 0.2
        p, b, c, s, h = params["jitter"]
        assert p == 0.8 and b == (0.6, 1.4) and c == (0.6, 1.4) and s == (0.8, 1.2) and h == (-0.1, 0.1)
        assert params["rrc"].interpolation == T.InterpolationMode.BICUBIC
    assert g1["blur"] == 1.0 and "solarize" not in g1
    assert g2["blur"] == 0.1 and g2["solarize"] == 0.2
    assert loc["blur"] == 0.5 and "solarize" not in loc
    assert g1["rrc"].size == (224, 224) and g1["rrc"].scale == (0.4, 1.0)
    assert loc["rrc"].size == (96, 96) and loc["rrc"].scale == (0.05, 0.4)


@pytest.mark.parametrize("which, scale", [("global_crop1", (0.4, 1.0)), ("local_crop", (0.05, 0.4))])
def test_crop_area_fractions_stay_in_the_configured_scale(which, scale):
    mc = MultiCrop(global_size=32, local_size=16, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), n_local=1)
    rrc = getattr(mc, which).transforms[0]
    img = _coordinate_image()
    torch.manual_seed(0)
    fractions = []
    for _ in range(200):
        crop = np.asarray(rrc(img)).astype(int)
        width = crop[..., 0].max() - crop[..., 0].min() + 1
        height = crop[..., 1].max() - crop[..., 1].min() + 1
        fractions.append(width * height / 256**2)
    fractions = np.array(fractions)
    lo, hi = scale
    # resizing blurs the edges by a pixel or two; allow that much slack around the configured range
    assert fractions.min() >= lo * 0.85 and fractions.max() <= min(hi * 1.1, 1.0)
    assert lo < np.median(fractions) < hi


def test_from_config_and_bad_values():
    cfg = dict(
        image_size=32,
        local_crop_size=16,
        global_crops_scale=[0.14, 1.0],
        local_crops_scale=[0.05, 0.14],
        local_crops_number=10,
        global_crops_number=2,
    )
    mc = MultiCrop.from_config(cfg)
    assert (mc.global_scale, mc.local_scale, mc.n_local) == ((0.14, 1.0), (0.05, 0.14), 10)
    with pytest.raises(UsageError, match="global_crops_scale"):
        MultiCrop(global_scale=(0.9, 0.4))
    with pytest.raises(UsageError, match="local_crops_scale"):
        MultiCrop(local_scale="big")
    with pytest.raises(UsageError, match="local_crops_number"):
        MultiCrop(n_local=-1)
