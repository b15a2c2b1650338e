"""ColorMe: histogram targets, KL and total loss by hand, U-Net shapes, green-only input, training, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.errors import UsageError
from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.colorme import (
    GREEN_MEAN,
    GREEN_STD,
    ColorMeLoss,
    ColorMeTransform,
    colour_distribution_kl,
    colour_histograms,
)
from dermctl.models.backbone import export_backbone, extract_features, load_exported, select_channels

TINY = dict(backbone="resnet18", image_size=32, decoder_channels=[16, 16, 8, 8, 8])


def _images(n: int = 4, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def _method():
    torch.manual_seed(0)
    return get_method("colorme")(resolve_config("colorme", TINY))


def test_histograms_of_a_hand_made_image() -> None:
    # 4x4 image. Red: 8 pixels at 0.0, 4 at 0.5, 4 at 1.0; blue: 12 at 0.3, 4 at 0.95. Bins of width 0.2.
    red = torch.tensor([0.0] * 8 + [0.5] * 4 + [1.0] * 4).reshape(4, 4)
    blue = torch.tensor([0.3] * 12 + [0.95] * 4).reshape(4, 4)
    hist = colour_histograms(torch.stack([red, blue])[None], bins=5)
    expected = [0.5, 0.0, 0.25, 0.0, 0.25] + [0.0, 0.75, 0.0, 0.0, 0.25]
    assert hist.shape == (1, 10)
    assert torch.allclose(hist[0], torch.tensor(expected))


def test_histograms_match_numpy_and_sum_to_one_per_colour() -> None:
    g = torch.Generator().manual_seed(0)
    rb = torch.rand(3, 2, 7, 9, generator=g)
    rb[0, 0, 0, 0] = 1.0  # the right edge falls in the last bin, as numpy does
    for bins in (5, 8):
        hist = colour_histograms(rb, bins).reshape(3, 2, bins)
        for i in range(3):
            for c in range(2):
                ref, _ = np.histogram(rb[i, c].numpy(), bins=bins, range=(0.0, 1.0))
                assert np.allclose(hist[i, c].numpy(), ref / ref.sum(), atol=1e-6)
        assert torch.allclose(hist.sum(-1), torch.ones(3, 2))


def test_kl_hand_values_and_reductions() -> None:
    red = [1.0, 0.0, 0.0, 0.0, 0.0]
    blue = [0.5, 0.5, 0.0, 0.0, 0.0]
    target = torch.tensor([red + blue])
    # Uniform prediction (zero logits): KL(red) = log 5, KL(blue) = 2 * 0.5 * log(0.5 / 0.2) = log 2.5.
    expected = math.log(5) + math.log(2.5)
    assert colour_distribution_kl(torch.zeros(1, 10), target).item() == pytest.approx(expected, rel=1e-6)
    # Each 5-bin group gets its own softmax: shifting one group's logits by a constant changes nothing.
    shifted = torch.cat([torch.full((1, 5), 3.0), torch.zeros(1, 5)], dim=1)
    assert colour_distribution_kl(shifted, target).item() == pytest.approx(expected, rel=1e-6)
    # Prediction equal to a strictly positive target: 0.
    t = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2, 0.6, 0.1, 0.1, 0.1, 0.1]])
    assert colour_distribution_kl(t.log(), t).item() == pytest.approx(0.0, abs=1e-6)
    # batchmean averages images, sum adds them (the study's code).
    two = torch.cat([target, t])
    logits = torch.zeros(2, 10)
    kl_t = sum(float(v) * math.log(float(v) / 0.2) for v in t[0])
    assert colour_distribution_kl(logits, two, reduction="batchmean").item() == pytest.approx(
        (expected + kl_t) / 2, rel=1e-6
    )
    # the default is the study's KLDivLoss(reduction="sum")
    assert colour_distribution_kl(logits, two).item() == pytest.approx(expected + kl_t, rel=1e-6)
    with pytest.raises(ValueError):
        colour_distribution_kl(logits, two, reduction="mean")


def test_total_loss_weights() -> None:
    recon = torch.full((1, 2, 2, 2), 0.5)
    rb = torch.zeros(1, 2, 2, 2)  # MSE = 0.25
    target = torch.tensor([[1.0, 0, 0, 0, 0] * 2])  # uniform prediction: KL = 2 log 5
    loss, parts = ColorMeLoss(mse_weight=10.0, kl_weight=1.0, bins=5)(recon, rb, torch.zeros(1, 10), target)
    assert parts["mse"].item() == pytest.approx(0.25)
    assert parts["kl"].item() == pytest.approx(2 * math.log(5), rel=1e-6)
    assert loss.item() == pytest.approx(10 * 0.25 + 2 * math.log(5), rel=1e-6)
    loss2, _ = ColorMeLoss(mse_weight=1.0, kl_weight=0.0, bins=5)(recon, rb, torch.zeros(1, 10), target)
    assert loss2.item() == pytest.approx(0.25)


def test_defaults_follow_table_1_and_study_code() -> None:
    cfg = resolve_config("colorme")
    assert (cfg["optimizer"], cfg["sgd_momentum"], cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (
        "sgd",
        0.9,
        50,
        1e-3,
        "none",
    )
    assert (cfg["backbone"], cfg["mse_weight"], cfg["kl_weight"], cfg["hist_bins"]) == (
        "resnet50",
        10.0,
        1.0,
        5,
    )


def test_transform_green_input_and_red_blue_targets() -> None:
    img = Image.fromarray(np.full((8, 8, 3), (255, 51, 0), dtype=np.uint8))
    out = ColorMeTransform(image_size=8, crop_scale_min=0.08)(img)
    assert out["green"].shape == (1, 8, 8) and out["rb"].shape == (2, 8, 8)
    assert torch.allclose(out["green"], torch.full((1, 8, 8), (0.2 - GREEN_MEAN) / GREEN_STD), atol=1e-5)
    assert torch.allclose(out["rb"][0], torch.ones(8, 8)) and torch.allclose(out["rb"][1], torch.zeros(8, 8))


def test_unet_shapes_and_range() -> None:
    m = _method()
    recon, logits, pooled = m.unet(torch.randn(3, 1, 32, 32))
    assert recon.shape == (3, 2, 32, 32) and logits.shape == (3, 10) and pooled.shape == (3, 512)
    assert recon.min() >= 0 and recon.max() <= 1
    recon, _, _ = m.unet.eval()(torch.randn(1, 1, 40, 24))  # sizes that are not powers of two
    assert recon.shape == (1, 2, 40, 24)
    with pytest.raises(UsageError):
        get_method("colorme")(resolve_config("colorme", dict(TINY, decoder_channels=[8, 8])))
    with pytest.raises(UsageError, match="kl_reduction"):
        get_method("colorme")(resolve_config("colorme", dict(TINY, kl_reduction="mean")))


def test_encoder_sees_green_only() -> None:
    m = _method().eval()
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    b = a.copy()
    b[..., 0] = 255 - b[..., 0]  # other red
    b[..., 2] = rng.integers(0, 256, (40, 40))  # other blue
    tf = m.transform(True)
    torch.manual_seed(5)
    xa = tf(Image.fromarray(a))
    torch.manual_seed(5)
    xb = tf(Image.fromarray(b))
    assert torch.equal(xa["green"], xb["green"]) and not torch.equal(xa["rb"], xb["rb"])
    with torch.no_grad():
        fa = m.unet(xa["green"][None])[2]
        fb = m.unet(xb["green"][None])[2]
    assert torch.equal(fa, fb)


def test_tiny_training_lowers_loss() -> None:
    m = _method()
    tf = m.transform(True)
    batch = default_collate([tf(im) for im in _images(4)])
    opt = torch.optim.Adam([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(20):
        loss, logs = m.training_step(batch, StepContext(it=it, epoch=0, training=True))
        assert {"mse", "kl", "feature_std"} <= set(logs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_export_green_plain_timm_encoder(tmp_path) -> None:
    m = _method().eval()
    backbone, meta = m.export()
    assert (meta.in_chans, meta.channels, meta.feature_rule) == (1, "green", "avgpool")
    assert meta.mean == (GREEN_MEAN,) and meta.std == (GREEN_STD,) and meta.extra["method"] == "colorme"
    plain = timm.create_model("resnet18", num_classes=0, in_chans=1)
    assert set(backbone.state_dict()) == set(plain.state_dict())
    export_backbone(backbone, tmp_path, meta)
    loaded, meta2 = load_exported(tmp_path)
    assert meta2.channels == "green" and meta2.in_chans == 1
    # Embedding path: normalise the RGB batch with the recorded stats, keep green: same as the U-Net's pool.
    rgb = torch.rand(2, 3, 32, 32)
    x = select_channels(
        (rgb - torch.tensor(meta2.mean).view(1, -1, 1, 1)) / torch.tensor(meta2.std).view(1, -1, 1, 1),
        "green",
    )
    with torch.no_grad():
        pooled = m.unet(x)[2]
        assert torch.allclose(extract_features(loaded.eval(), x, "avgpool"), pooled, atol=1e-5)
