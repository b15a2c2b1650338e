"""ColorMe: histogram targets, KL and total loss by hand under both loss conventions (the study authors' and
dermctl 0.1.0's per_channel), U-Net wiring against smp.Unet, green-only input, defaults and their sources,
training, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import default_collate

from dermctl.errors import UsageError
from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.base import ENGINE_DEFAULTS
from dermctl.methods.colorme import (
    GREEN_MEAN,
    GREEN_STD,
    ColorMe,
    ColorMeLoss,
    ColorMeStudyLoss,
    ColorMeTransform,
    colour_distribution_kl,
    colour_histograms,
    joint_colour_histograms,
    normalise_rb,
)
from dermctl.models.backbone import (
    create_backbone,
    export_backbone,
    extract_features,
    load_exported,
    select_channels,
)

TINY = dict(init="random", backbone="resnet18", image_size=32, decoder_channels=[16, 16, 8, 8, 8])
CONVENTIONS = ("study", "per_channel")


def _images(n: int = 4, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def _method(convention: str = "per_channel", **over):
    torch.manual_seed(0)
    return get_method("colorme")(resolve_config("colorme", dict(TINY, loss_convention=convention, **over)))


def _batch(m, n: int = 4) -> dict:
    tf = m.transform(True)
    torch.manual_seed(1)
    return default_collate([tf(im) for im in _images(n)])


# -- per_channel convention (dermctl 0.1.0) --------------------------------------------------------------


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


def test_per_channel_step_is_dermctl_0_1_0_bit_for_bit() -> None:
    # Recorded with dermctl 0.1.0 (before the study convention existed) on this seeded model and batch.
    m = _method("per_channel", views="crop")  # 0.1.0 cropped and flipped
    loss, logs = m.training_step(_batch(m), StepContext(it=0, epoch=0, training=True))
    assert loss.item() == pytest.approx(1.8576483726501465, rel=1e-5)
    assert logs["mse"] == pytest.approx(0.05834411829710007, rel=1e-5)
    assert logs["kl"] == pytest.approx(1.2742072343826294, rel=1e-5)
    recon, _, _ = m.unet(torch.randn(3, 1, 32, 32))
    assert recon.min() >= 0 and recon.max() <= 1  # sigmoid output


# -- study convention (the authors' code) ---------------------------------------------------------------


def test_joint_histograms_by_hand() -> None:
    # Same 4x4 image as above: 16 red + 16 blue pixels, all in [0, 1]: each count / 32, the 10 sum to 1.
    red = torch.tensor([0.0] * 8 + [0.5] * 4 + [1.0] * 4).reshape(4, 4)
    blue = torch.tensor([0.3] * 12 + [0.95] * 4).reshape(4, 4)
    rb = torch.stack([red, blue])[None]
    hist = joint_colour_histograms(rb, bins=5)
    assert torch.allclose(hist[0], torch.tensor([8, 0, 4, 0, 4, 0, 12, 0, 0, 4]) / 32.0)
    assert hist.sum().item() == pytest.approx(1.0)
    # The authors' bug on request: histogram of the normalised values on (0, 1). Red normalised:
    # 0 -> -2.12 (dropped), 0.5 -> 0.066 (bin 0), 1 -> 2.25 (dropped); blue: 0.3 -> -0.47 (dropped),
    # 0.95 -> 2.42 (dropped). Counted: 4 pixels, all red bin 0.
    clipped = joint_colour_histograms(rb, bins=5, hist_range="normalised_clipped")
    assert torch.allclose(clipped[0], torch.tensor([1.0] + [0.0] * 9))
    # the same as the authors' wrapper: torch.histogram(channel, bins=5, range=(0, 1)), / the sum of all 10
    g = torch.Generator().manual_seed(3)
    rgb = torch.rand(3, 12, 12, generator=g)
    rgb_n = (rgb - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(3, 1, 1)
    for values, hist_range in ((rgb, "raw"), (rgb_n, "normalised_clipped")):
        h = torch.cat([torch.histogram(values[c], bins=5, range=(0.0, 1.0)).hist for c in (0, 2)])
        ours = joint_colour_histograms(rgb[[0, 2]][None], 5, hist_range)[0]
        assert torch.allclose(ours, h / h.sum(), atol=1e-6)
    # raw: every pixel counted, so each colour holds half of the mass
    assert torch.allclose(
        joint_colour_histograms(rgb[[0, 2]][None]), colour_histograms(rgb[[0, 2]][None]) / 2
    )
    # an image with no counted pixel: zero target (adds no KL) instead of the authors' 0 / 0
    dark = torch.zeros(1, 2, 3, 3)
    assert torch.equal(joint_colour_histograms(dark, 5, "normalised_clipped"), torch.zeros(1, 10))
    with pytest.raises(ValueError, match="hist_range"):
        joint_colour_histograms(dark, 5, "clipped")


def test_joint_kl_one_softmax_over_ten_outputs() -> None:
    target = torch.tensor([[0.5, 0, 0, 0, 0, 0.25, 0.25, 0, 0, 0]])
    # zero logits: p = 1/10 everywhere; KL = 0.5 log 5 + 2 * 0.25 log 2.5
    expected = 0.5 * math.log(5) + 0.5 * math.log(2.5)
    assert colour_distribution_kl(torch.zeros(1, 10), target, joint=True).item() == pytest.approx(
        expected, rel=1e-6
    )
    # one softmax over all 10: raising the red logits by log 3 moves mass to red (unlike per-colour groups)
    logits = torch.cat([torch.full((1, 5), math.log(3.0)), torch.zeros(1, 5)], dim=1)
    p_red, p_blue = 3 / 20, 1 / 20
    by_hand = 0.5 * math.log(0.5 / p_red) + 0.5 * math.log(0.25 / p_blue)
    assert colour_distribution_kl(logits, target, joint=True).item() == pytest.approx(by_hand, rel=1e-6)
    # as the authors: KLDivLoss(reduction="sum")(Softmax(dim=-1)(logits).log(), hist)
    theirs = torch.nn.KLDivLoss(reduction="sum")(torch.softmax(logits, dim=-1).log(), target)
    assert colour_distribution_kl(logits, target, joint=True).item() == pytest.approx(theirs.item(), rel=1e-6)


def test_study_loss_by_hand() -> None:
    # 1 image, 1x2 pixels. Normalised targets R = [1, -1], B = [0, 2]; predictions R = [0, 0], B = [0, 0];
    # green input = [5, 7] (its own target: no error). Squared errors: R 1 + 1, G 0 + 0, B 0 + 4 -> 6 / 6 px.
    pred = torch.zeros(1, 2, 1, 2)
    green = torch.tensor([[[[5.0, 7.0]]]])
    target = torch.tensor([[[[1.0, -1.0]], [[0.0, 2.0]]]])
    hist = torch.tensor([[0.5, 0, 0, 0, 0, 0.5, 0, 0, 0, 0]])
    loss, parts = ColorMeStudyLoss(10.0, 1.0, 5)(pred, green, target, torch.zeros(1, 10), hist)
    assert parts["mse"].item() == pytest.approx(1.0)  # 6 / 6, = 2/3 of the red/blue mean 6 / 4
    assert parts["kl"].item() == pytest.approx(math.log(5), rel=1e-6)  # 2 * 0.5 * log(0.5 / 0.1)
    assert loss.item() == pytest.approx(10 * 1.0 + math.log(5), rel=1e-6)


def test_study_step_matches_the_authors_expression() -> None:
    for hist_range in ("raw", "normalised_clipped"):
        m = _method("study", hist_range=hist_range)
        batch = _batch(m)
        loss, logs = m.training_step(batch, StepContext(it=0, epoch=0, training=True))
        recon, logits, _ = m.unet(batch["green"])
        # the authors' _model_step and wrapper, spelt with torch primitives and ImageNet's numbers
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        rgb = torch.stack(
            [batch["rb"][:, 0], batch["green"][:, 0] * GREEN_STD + GREEN_MEAN, batch["rb"][:, 1]], 1
        )
        imgs = (rgb - mean) / std
        values = imgs if hist_range == "normalised_clipped" else rgb
        hists = []
        for v in values:
            h = torch.cat([torch.histogram(v[c], bins=5, range=(0.0, 1.0)).hist for c in (0, 2)])
            hists.append(h / h.sum())
        pred_imgs = torch.cat([recon[:, 0:1], batch["green"], recon[:, 1:2]], dim=1)
        l_mse = torch.nn.MSELoss()(pred_imgs, imgs)
        l_kld = torch.nn.KLDivLoss(reduction="sum")(torch.softmax(logits, -1).log(), torch.stack(hists))
        assert logs["mse"] == pytest.approx(l_mse.item(), rel=1e-5)
        assert logs["kl"] == pytest.approx(l_kld.item(), rel=1e-5)
        assert loss.item() == pytest.approx(10 * l_mse.item() + l_kld.item(), rel=1e-5)
        # and the MSE is 2/3 of the red/blue mean
        rb_mse = F.mse_loss(recon, normalise_rb(batch["rb"])).item()
        assert logs["mse"] == pytest.approx(2 / 3 * rb_mse, rel=1e-5)


def test_study_unet_is_linear_with_smp_init() -> None:
    m = _method("study")
    recon, logits, pooled = m.unet(torch.randn(3, 1, 32, 32))
    assert recon.shape == (3, 2, 32, 32) and logits.shape == (3, 10) and pooled.shape == (3, 512)
    assert recon.min() < 0 or recon.max() > 1  # no sigmoid: normalised targets span about [-2.1, 2.6]
    assert torch.count_nonzero(m.unet.head.bias) == 0  # smp initialize_head: zero bias
    # smp initialize_decoder: kaiming_uniform(fan_in, relu): bound sqrt(6 / fan_in), wider than torch's
    # default 1 / sqrt(fan_in)
    w = m.unet.blocks[0].conv[0].weight
    bound = math.sqrt(6 / w[0].numel())
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


# -- architecture, defaults, training, export ---------------------------------------------------------------


def test_decoder_wiring_matches_smp_unet_resnet50() -> None:
    # smp.Unet(resnet50): encoder channels (1, 64, 256, 512, 1024, 2048); its UnetDecoder drops the first,
    # reverses: in = [2048, 256, 128, 64, 32], skip = [1024, 512, 256, 64, 0], out = (256, 128, 64, 32, 16).
    torch.manual_seed(0)
    m = get_method("colorme")(resolve_config("colorme", dict(init="random", image_size=64)))
    ins = [b.conv[0].in_channels for b in m.unet.blocks]
    outs = [b.conv[3].out_channels for b in m.unet.blocks]
    assert ins == [2048 + 1024, 256 + 512, 128 + 256, 64 + 64, 32 + 0]
    assert outs == [256, 128, 64, 32, 16]
    head = m.unet.head
    assert (head.in_channels, head.out_channels, head.kernel_size, head.padding) == (16, 2, (3, 3), (1, 1))
    assert (m.unet.hist_head.in_features, m.unet.hist_head.out_features) == (2048, 10)
    # each block doubles the resolution, as smp's scale_factor=2: stride 32 -> 16 -> 8 -> 4 -> 2 -> 1
    m.eval()
    with torch.no_grad():
        recon, _, _ = m.unet(torch.randn(1, 1, 64, 64))
    assert recon.shape == (1, 2, 64, 64)


def test_pretrained_one_channel_conv_sums_rgb_weights(tmp_path) -> None:
    # smp's patch_first_conv (in_channels=1) sums conv1's RGB weights; timm's adapt_input_conv does too, on
    # any pretrained load (the imagenet weights, or a file as here: no network).
    torch.manual_seed(0)
    rgb = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    green = create_backbone("resnet18", str(path), in_chans=1)
    assert green.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(green.conv1.weight, rgb.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(green.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)


def test_defaults_follow_the_study_and_the_authors_code() -> None:
    cfg = resolve_config("colorme")
    assert (cfg["optimizer"], cfg["sgd_momentum"], cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (
        "sgd",
        0.0,
        50,
        1e-3,
        "none",
    )
    assert (cfg["init"], cfg["lr_scaling"], cfg["loss_convention"], cfg["hist_range"]) == (
        "imagenet",
        "none",
        "study",
        "raw",
    )
    assert (cfg["backbone"], cfg["mse_weight"], cfg["kl_weight"], cfg["hist_bins"], cfg["kl_reduction"]) == (
        "resnet50.tv_in1k",
        10.0,
        1.0,
        5,
        "sum",
    )


def test_every_default_the_method_sets_has_a_source() -> None:
    cfg = ColorMe.defaults()
    own = {k for k, v in cfg.items() if k not in ENGINE_DEFAULTS or ENGINE_DEFAULTS[k] != v}
    assert own <= set(ColorMe.default_sources), own - set(ColorMe.default_sources)
    assert set(ColorMe.default_sources) <= set(cfg)  # no source for a key that does not exist
    assert all(isinstance(s, str) and s.strip() for s in ColorMe.default_sources.values())


def test_bad_options_name_the_key() -> None:
    with pytest.raises(UsageError, match="loss_convention"):
        _method("authors")
    with pytest.raises(UsageError, match="hist_range"):
        _method("study", hist_range="clipped")
    with pytest.raises(UsageError, match="hist_range"):
        _method("per_channel", hist_range="normalised_clipped")
    with pytest.raises(UsageError, match="kl_reduction"):
        _method("study", kl_reduction="mean")
    with pytest.raises(UsageError, match="decoder_channels"):
        _method("study", decoder_channels=[8, 8])


def test_transform_green_input_and_red_blue_targets() -> None:
    img = Image.fromarray(np.full((8, 8, 3), (255, 51, 0), dtype=np.uint8))
    out = ColorMeTransform(image_size=8, crop_scale_min=0.08)(img)
    assert out["green"].shape == (1, 8, 8) and out["rb"].shape == (2, 8, 8)
    assert torch.allclose(out["green"], torch.full((1, 8, 8), (0.2 - GREEN_MEAN) / GREEN_STD), atol=1e-5)
    assert torch.allclose(out["rb"][0], torch.ones(8, 8)) and torch.allclose(out["rb"][1], torch.zeros(8, 8))
    norm = normalise_rb(out["rb"][None])[0]
    assert torch.allclose(norm[0], torch.full((8, 8), (1 - 0.485) / 0.229))
    assert torch.allclose(norm[1], torch.full((8, 8), (0 - 0.406) / 0.225))


def test_unet_shapes_odd_sizes() -> None:
    for convention in CONVENTIONS:
        m = _method(convention).eval()
        recon, _, _ = m.unet(torch.randn(1, 1, 40, 24))  # sizes that are not multiples of 32
        assert recon.shape == (1, 2, 40, 24)


def test_encoder_sees_green_only() -> None:
    m = _method("study").eval()
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


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_tiny_training_lowers_loss(convention: str) -> None:
    m = _method(convention, backbone="resnet10t")  # the smallest timm ResNet: keeps the test in seconds
    batch = _batch(m)
    opt = torch.optim.Adam([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(10):
        loss, logs = m.training_step(batch, StepContext(it=it, epoch=0, training=True))
        assert {"mse", "kl", "feature_std"} <= set(logs)
        assert math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_tiny_training_with_the_study_optimiser() -> None:
    # the defaults' optimiser: plain SGD (no momentum), lr 1e-3, a few steps on the study convention
    m = _method("study", backbone="resnet10t")
    cfg = m.cfg
    assert cfg["sgd_momentum"] == 0.0
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=cfg["lr"], momentum=0.0)
    batch = _batch(m)
    losses = []
    for it in range(5):
        loss, _ = m.training_step(batch, StepContext(it=it, epoch=0, training=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_export_green_plain_timm_encoder(tmp_path, convention: str) -> None:
    m = _method(convention).eval()
    backbone, meta = m.export()
    assert (meta.in_chans, meta.channels, meta.feature_rule) == (1, "green", "avgpool")
    assert meta.mean == (GREEN_MEAN,) and meta.std == (GREEN_STD,) and meta.extra["method"] == "colorme"
    plain = timm.create_model("resnet18", num_classes=0, in_chans=1)
    assert set(backbone.state_dict()) == set(plain.state_dict())
    export_backbone(backbone, tmp_path, meta)
    loaded, meta2 = load_exported(tmp_path)
    assert meta2.channels == "green" and meta2.in_chans == 1
    # Embedding path: normalise the RGB batch with the recorded stats, keep green: the same input the
    # encoder had in training (the transform's green), and the same pooled features as the U-Net's.
    rgb = torch.rand(2, 3, 32, 32)
    x = select_channels(
        (rgb - torch.tensor(meta2.mean).view(1, -1, 1, 1)) / torch.tensor(meta2.std).view(1, -1, 1, 1),
        "green",
    )
    assert torch.allclose(x, (rgb[:, 1:2] - GREEN_MEAN) / GREEN_STD, atol=1e-6)
    with torch.no_grad():
        pooled = m.unet(x)[2]
        assert torch.allclose(extract_features(loaded.eval(), x, "avgpool"), pooled, atol=1e-5)


def test_views_resize_as_the_authors_or_crop() -> None:
    """The authors' colorme_wrapper.py only resizes (no crop, no flip): the default view is deterministic
    and sees the whole image; `views = "crop"` gives the random crop + flip variant."""
    from PIL import Image

    from dermctl.methods.colorme import ColorMeTransform

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    assert resolve_config("colorme")["views"] == "resize"
    resize = ColorMeTransform(32, views="resize")
    a, b = resize(img), resize(img)
    assert torch.equal(a["green"], b["green"]) and a["green"].shape == (1, 32, 32)
    expected = torch.from_numpy(np.asarray(img.resize((32, 32), Image.BILINEAR))).permute(2, 0, 1) / 255
    assert torch.allclose(a["rb"], expected[[0, 2]], atol=1 / 255 + 1e-6)
    torch.manual_seed(0)
    crop = ColorMeTransform(32, views="crop")
    assert not torch.equal(crop(img)["green"], crop(img)["green"])
    with pytest.raises(UsageError, match="views"):
        get_method("colorme")(resolve_config("colorme", dict(TINY, views="zoom")))
