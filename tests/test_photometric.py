"""Batched device-side photometric augmentation against the per-image PIL reference (the official
DINO / SimCLR / BYOL pipelines): per operation with identical parameters, whole pipelines with identical
seeds, and statistics over many draws (probabilities, factor ranges, output moments)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from dermctl.errors import UsageError
from dermctl.methods.base import StepContext
from dermctl.methods.byol import BYOL, BYOLTransform
from dermctl.methods.dino import DINO
from dermctl.methods.multicrop import MultiCrop
from dermctl.methods.photometric import (
    BLUR,
    BRIGHTNESS,
    CONTRAST,
    GRAY,
    HUE,
    JITTER,
    N_PARAMS,
    ORDER,
    SATURATION,
    SIGMA,
    SOLARIZE,
    PhotometricPolicy,
    apply_photometric,
    augment_batch,
    resolve_gpu_augment,
)
from dermctl.methods.registry import resolve_config
from dermctl.methods.simclr import SimCLR, SimCLRTransform

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # compare in [0, 1] units


def _image(seed: int = 0, size: int = 64) -> Image.Image:
    """A smooth colourful image (upsampled noise): blur and hue changes are visible, not saturated."""
    rs = np.random.RandomState(seed)
    return Image.fromarray(rs.randint(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)


def _params(**values: float) -> torch.Tensor:
    p = torch.zeros(1, N_PARAMS)
    p[0, BRIGHTNESS] = p[0, CONTRAST] = p[0, SATURATION] = 1.0
    p[0, ORDER] = torch.arange(4, dtype=torch.float32)
    cols = {"JITTER": JITTER, "BRIGHTNESS": BRIGHTNESS, "CONTRAST": CONTRAST, "SATURATION": SATURATION}
    cols.update({"HUE": HUE, "GRAY": GRAY, "BLUR": BLUR, "SIGMA": SIGMA, "SOLARIZE": SOLARIZE})
    for name, v in values.items():
        p[0, cols[name]] = v
    return p


def _device(img: Image.Image, params: torch.Tensor) -> torch.Tensor:
    return apply_photometric(TF.pil_to_tensor(img)[None], params, **IDENTITY)[0]


def _levels(a: torch.Tensor, ref: Image.Image) -> tuple[float, float]:
    """Mean and max absolute difference in grey levels (0-255)."""
    d = (a - TF.to_tensor(ref)).abs() * 255
    return float(d.mean()), float(d.max())


# -- one operation, identical parameters ------------------------------------------------------------------


def test_solarize_is_exactly_pils():
    img = _image()
    assert torch.allclose(
        _device(img, _params(SOLARIZE=1)), TF.to_tensor(ImageOps.solarize(img, 128)), atol=1e-6
    )
    # threshold exactly at 128: 127 stays, 128 becomes 127
    edge = Image.fromarray(np.array([[[127, 128, 255]]], dtype=np.uint8))
    out = _device(edge, _params(SOLARIZE=1)) * 255
    assert out.flatten().round().tolist() == [127.0, 127.0, 0.0]


def test_no_parameters_set_is_the_identity_up_to_normalisation():
    img = _image()
    assert torch.allclose(_device(img, _params()), TF.to_tensor(img), atol=1e-6)
    out = apply_photometric(TF.pil_to_tensor(img)[None], _params())[0]
    assert torch.allclose(
        out, TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), atol=1e-5
    )


@pytest.mark.parametrize(
    "params, reference",
    [
        (dict(GRAY=1), lambda im: TF.rgb_to_grayscale(im, 3)),
        (dict(JITTER=1, BRIGHTNESS=0.6), lambda im: TF.adjust_brightness(im, 0.6)),
        (dict(JITTER=1, BRIGHTNESS=1.4), lambda im: TF.adjust_brightness(im, 1.4)),
        (dict(JITTER=1, CONTRAST=0.6), lambda im: TF.adjust_contrast(im, 0.6)),
        (dict(JITTER=1, CONTRAST=1.4), lambda im: TF.adjust_contrast(im, 1.4)),
        (dict(JITTER=1, SATURATION=0.2), lambda im: TF.adjust_saturation(im, 0.2)),
        (dict(JITTER=1, SATURATION=1.8), lambda im: TF.adjust_saturation(im, 1.8)),
    ],
)
def test_colour_operations_match_pil_to_rounding(params, reference):
    img = _image()
    mean, worst = _levels(_device(img, _params(**params)), reference(img))
    assert mean < 0.6 and worst <= 1.3  # PIL rounds to whole grey levels (contrast: its mean too)
    assert float((_device(img, _params(**params)) - TF.to_tensor(img)).abs().mean()) * 255 > 2  # it did act


@pytest.mark.parametrize("hue", [-0.1, 0.05, 0.3])
def test_hue_matches_pil(hue):
    img = _image()
    mean, _ = _levels(_device(img, _params(JITTER=1, HUE=hue)), TF.adjust_hue(img, hue))
    assert mean < 2.0  # PIL quantises hue and saturation to 8 bits in its HSV round trip


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0, 2.0])
def test_blur_matches_pil_gaussian_blur_of_that_radius(sigma):
    img = _image(size=48)
    mean, worst = _levels(
        _device(img, _params(BLUR=1, SIGMA=sigma)), img.filter(ImageFilter.GaussianBlur(sigma))
    )
    assert mean < 1.0 and worst < 4  # PIL approximates the Gaussian by three box blurs
    if sigma >= 1:  # and a different radius is clearly different
        other = img.filter(ImageFilter.GaussianBlur(sigma * 2))
        assert _levels(_device(img, _params(BLUR=1, SIGMA=sigma)), other)[0] > 2 * mean


def test_jitter_follows_each_samples_order():
    img = _image()
    x = TF.pil_to_tensor(img)[None].repeat(2, 1, 1, 1)
    p = _params(JITTER=1, BRIGHTNESS=1.4, CONTRAST=0.5).repeat(2, 1)
    p[1, ORDER] = torch.tensor([1.0, 0.0, 2.0, 3.0])  # contrast first for the second sample
    out = apply_photometric(x, p, **IDENTITY)
    ref_bc = TF.adjust_contrast(TF.adjust_brightness(img, 1.4), 0.5)
    ref_cb = TF.adjust_brightness(TF.adjust_contrast(img, 0.5), 1.4)
    assert _levels(out[0], ref_bc)[0] < 0.7 and _levels(out[1], ref_cb)[0] < 0.7
    assert float((out[0] - out[1]).abs().mean()) * 255 > 3


def test_batched_equals_one_by_one_and_is_deterministic():
    imgs = [_image(seed=i) for i in range(6)]
    policy = PhotometricPolicy(p_blur=0.5, p_solarize=0.3)
    torch.manual_seed(0)
    random.seed(0)
    params = torch.stack([policy.draw() for _ in imgs])
    x = torch.stack([TF.pil_to_tensor(im) for im in imgs])
    batched = apply_photometric(x, params)
    single = torch.cat([apply_photometric(x[i : i + 1], params[i : i + 1]) for i in range(len(imgs))])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.equal(batched, apply_photometric(x, params))
    assert batched.dtype == torch.float32


# -- whole views, identical seeds ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "views",
    [
        MultiCrop(48, 24, n_local=2),
        SimCLRTransform(40),
        BYOLTransform(40),
    ],
    ids=["dino", "simclr", "byol"],
)
def test_split_views_draw_like_the_pil_pipeline_and_agree(views):
    """Same seed -> same crop, same coin flips and factors, so the device result is the PIL result up to
    rounding; and both consume the RNGs identically (later draws are unaffected)."""
    img = _image(seed=3, size=80)
    split = views.on_device()
    diffs = []
    for seed in range(12):
        random.seed(seed)
        torch.manual_seed(seed)
        ref = views(img)
        after = (torch.get_rng_state(), random.getstate())
        random.seed(seed)
        torch.manual_seed(seed)
        out = split(img)
        assert torch.equal(after[0], torch.get_rng_state()) and after[1] == random.getstate()
        for key, ref_views in ref.items():
            assert all(c.dtype == torch.uint8 for c in out[key])
            for r, c, p in zip(ref_views, out[key], out[key + "_photo"], strict=True):
                diffs.append(float((apply_photometric(c[None], p[None])[0] - r).abs().mean()))
    assert np.mean(diffs) < 0.04 and np.max(diffs) < 0.1  # normalised units: ~2 grey levels


# -- statistics over many draws -------------------------------------------------------------------------


def _draws(policy: PhotometricPolicy, n: int = 4000) -> torch.Tensor:
    torch.manual_seed(1)
    random.seed(1)
    return torch.stack([policy.draw() for _ in range(n)])


@pytest.mark.parametrize(
    "which, blur, solarize",
    [("global1", 1.0, None), ("global2", 0.1, 0.2), ("local", 0.5, None)],
)
def test_dino_view_probabilities(which, blur, solarize):
    mc = MultiCrop(32, 16, n_local=1)
    policy = {"global1": mc.policies["globals"][0], "global2": mc.policies["globals"][1]}.get(
        which, mc.policies["locals"][0]
    ).photometric
    p = _draws(policy)
    tol = 0.025
    assert abs(float(p[:, JITTER].mean()) - 0.8) < tol and abs(float(p[:, GRAY].mean()) - 0.2) < tol
    assert abs(float(p[:, BLUR].mean()) - blur) < tol
    assert abs(float(p[:, SOLARIZE].mean()) - (solarize or 0.0)) < tol
    jit = p[p[:, JITTER] > 0]
    for col, lo, hi in (
        (BRIGHTNESS, 0.6, 1.4),
        (CONTRAST, 0.6, 1.4),
        (SATURATION, 0.8, 1.2),
        (HUE, -0.1, 0.1),
    ):
        v = jit[:, col].numpy()
        assert lo <= v.min() and v.max() <= hi
        assert (
            abs(v.mean() - (lo + hi) / 2) < 0.02 * (hi - lo) * 5 and abs(v.std() - (hi - lo) / 12**0.5) < 0.02
        )
    sig = p[p[:, BLUR] > 0, SIGMA].numpy()
    assert 0.1 <= sig.min() and sig.max() <= 2.0 and abs(sig.mean() - 1.05) < 0.06
    # every order of the four colour operations occurs
    assert len({tuple(r) for r in jit[:, ORDER].long().tolist()}) == 24


def test_simclr_and_byol_policies():
    s = _draws(SimCLRTransform(32).policies["views"][0].photometric, 3000)
    assert abs(float(s[:, BLUR].mean()) - 0.5) < 0.03 and float(s[:, SOLARIZE].max()) == 0
    jit = s[s[:, JITTER] > 0]
    assert float(jit[:, BRIGHTNESS].min()) < 0.25 and float(jit[:, BRIGHTNESS].max()) > 1.75  # 0.8 strength
    b1, b2 = (_draws(v.photometric, 3000) for v in BYOLTransform(32).policies["views"])
    assert float(b1[:, BLUR].mean()) == 1.0 and float(b1[:, SOLARIZE].mean()) == 0.0
    assert abs(float(b2[:, BLUR].mean()) - 0.1) < 0.02 and abs(float(b2[:, SOLARIZE].mean()) - 0.2) < 0.025


def test_output_statistics_match_the_pil_pipeline_over_many_draws():
    """Independent draws (different seeds) of the two paths: per-channel mean and std of the views and
    the per-view brightness / contrast / saturation changes agree."""
    imgs = [_image(seed=i, size=40) for i in range(4)]
    views = MultiCrop(32, 16, n_local=0, n_global=2)
    split = views.on_device()

    def stats(outputs: list[torch.Tensor]) -> np.ndarray:
        x = torch.stack(outputs) * torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        x = x + torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)  # back to [0, 1]
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).flatten(1)
        sat = (x.max(1).values - x.min(1).values).flatten(1).mean(1)
        grad = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))  # sharpness: blur lowers it
        return np.array(
            [
                *x.mean((0, 2, 3)).tolist(),
                *x.std((0, 2, 3)).tolist(),
                float(gray.mean(1).std()),  # brightness changes between views
                float(gray.std(1).mean()),  # contrast
                float(gray.std(1).std()),  # contrast changes
                float(sat.mean()),  # saturation (grayscale lowers it)
                float(sat.std()),
                float(grad.mean()),
                float(grad.std()),
                float((x > 0.99).float().mean()),  # clipped highlights (brightness up, solarize down)
            ]
        )

    ref, dev = [], []
    random.seed(10)
    torch.manual_seed(10)
    for i in range(300):
        ref.extend(views(imgs[i % 4])["globals"])
    random.seed(20)
    torch.manual_seed(20)
    for i in range(300):
        item = split(imgs[i % 4])
        dev.extend(apply_photometric(torch.stack(item["globals"]), torch.stack(item["globals_photo"])))
    a, b = stats(ref), stats(dev)
    # two seeds of the same path differ by <= 5%; dropping jitter, grayscale, blur or solarisation from
    # the device path moves some statistic by 18-86%
    assert np.all(np.abs(a - b) <= 0.12 * np.abs(a)), (a.round(3), b.round(3))


# -- batches, methods, config ---------------------------------------------------------------------------


def test_augment_batch_finishes_every_view_list_once():
    mc = MultiCrop(32, 16, n_local=3).on_device()
    random.seed(0)
    torch.manual_seed(0)
    batch = default_collate([mc(_image(seed=i)) for i in range(4)])
    assert set(batch) == {"globals", "locals", "globals_photo", "locals_photo"}
    out = augment_batch(batch)
    assert set(out) == {"globals", "locals"}
    assert [tuple(v.shape) for v in out["globals"]] == [(4, 3, 32, 32)] * 2
    assert [tuple(v.shape) for v in out["locals"]] == [(4, 3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 for v in out["globals"] + out["locals"])
    assert augment_batch(out) is out  # already finished: untouched
    for i in range(2):  # each view got its own parameters
        assert torch.allclose(
            out["globals"][i], apply_photometric(batch["globals"][i], batch["globals_photo"][i])
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the engine may call it under autocast
        assert augment_batch(batch)["globals"][0].dtype == torch.float32


def test_resolve_gpu_augment():
    assert resolve_gpu_augment("auto", "cpu") is False and resolve_gpu_augment("auto", "cuda") is True
    assert resolve_gpu_augment(True, "cpu") is True and resolve_gpu_augment("false", "cuda") is False
    with pytest.raises(UsageError, match="gpu_augment.*'sometimes'"):
        resolve_gpu_augment("sometimes", "cpu")
    with pytest.raises(UsageError, match="gpu_augment"):
        resolve_gpu_augment(1, "cpu")


TINY = {
    "dino": dict(
        backbone="vit_tiny_patch16_224",
        image_size=32,
        local_crop_size=16,
        local_crops_number=2,
        out_dim=32,
        hidden_dim=16,
        bottleneck_dim=8,
        warmup_teacher_temp_epochs=0,
    ),
    "simclr": dict(backbone="resnet10t", init="random", image_size=32, proj_hidden_dim=16, proj_out_dim=8),
    "byol": dict(
        backbone="resnet10t",
        init="random",
        image_size=32,
        proj_hidden_dim=16,
        proj_out_dim=8,
        pred_hidden_dim=16,
    ),
}


@pytest.mark.parametrize("cls", [DINO, SimCLR, BYOL], ids=lambda c: c.name)
def test_methods_with_gpu_augment_hand_uint8_views_to_device_augment(cls):
    cfg_off = resolve_config(cls.name, TINY[cls.name])
    assert cfg_off["gpu_augment"] == "auto"
    torch.manual_seed(0)
    off = cls(cfg_off)
    assert not any(k.endswith("_photo") for k in off.transform(True)(_image()))  # auto on CPU: PIL
    on = cls(resolve_config(cls.name, {**TINY[cls.name], "gpu_augment": True}))
    tf = on.transform(True)
    random.seed(0)
    torch.manual_seed(0)
    batch = default_collate([tf(_image(seed=i)) for i in range(4)])
    key = "globals" if cls is DINO else "views"
    assert batch[key][0].dtype == torch.uint8 and key + "_photo" in batch
    ctx = StepContext(it=0, epoch=0, training=True, momentum=0.996)
    done = on.device_augment(batch, ctx)
    assert done[key][0].dtype == torch.float32 and key + "_photo" not in done
    loss, _ = on.training_step(done, ctx)
    assert torch.isfinite(loss)
    loss2, _ = on.training_step(batch, ctx)  # the step finishes a raw batch itself
    assert torch.isfinite(loss2)
    with pytest.raises(UsageError, match="gpu_augment"):
        cls(resolve_config(cls.name, {**TINY[cls.name], "gpu_augment": "gpu"}))


def test_worker_crop_is_exactly_torchvisions_crop_and_flip():
    img = _image(seed=2, size=90).crop((0, 0, 90, 70))
    policy = MultiCrop(32, 16, n_local=1).policies["locals"][0]
    geometric = T.Compose([*policy.geometric_steps(), T.PILToTensor()])
    split = policy.split_pipeline()
    for seed in range(20):
        torch.manual_seed(seed)
        ref = geometric(img)
        torch.manual_seed(seed)
        crop, _ = split(img)
        assert crop.dtype == torch.uint8 and torch.equal(crop, ref)
