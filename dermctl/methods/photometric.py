"""A view's augmentation split in two: geometric work per image in the loader workers, photometric work
batched on the training device.

The official SimCLR / BYOL / DINO / iBOT pipelines run every step per image on PIL images in the loader
workers: crop and flip, colour jitter (torchvision `ColorJitter`, random order), grayscale, Gaussian blur
(PIL, radius ~ U(0.1, 2.0)), solarisation at 128, `ToTensor`, normalisation. With `gpu_augment` on, a
worker only crops and flips (uint8 out) and *draws* the photometric parameters of the view with exactly the
same random calls, in the same order, as the PIL pipeline would (so a seeded image gets the same crop,
jitter factors, blur radius and coin flips either way); `apply_photometric` then applies them to the whole
batch on the device in float32, with per-sample parameters:

    colour jitter   brightness, contrast, saturation, hue in the sample's random order (torchvision's
                    tensor formulas; contrast blends with the mean of the grayscale image)
    grayscale       ITU-R 601-2 luma (0.299, 0.587, 0.114), PIL's `convert("L")`
    Gaussian blur   sigma = PIL's radius (PIL's `GaussianBlur(radius)` approximates a Gaussian of standard
                    deviation `radius` by three box blurs), separable kernel of half-width ceil(3 sigma_max),
                    edges replicated as PIL does
    solarize        x -> 1 - x where x >= 128/255 (PIL `ImageOps.solarize(threshold=128)`)
    normalise       (x - mean) / std

The device path works on floats where PIL rounds to uint8 after every step, so the two agree to about one
grey level per step, not bit for bit (tested statistically and per operation in tests/test_photometric.py).

Example:
    >>> views = ViewSet({"views": [ViewPolicy(224, (0.08, 1.0), PhotometricPolicy(p_blur=0.5))] * 2},
    ...                 device_photometric=True)
    >>> item = views(pil_image)          # {"views": [uint8 (3, 224, 224)] * 2, "views_photo": [(13,)] * 2}
    >>> batch = augment_batch(to_device(default_collate(items)))   # "views": float, normalised
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from dermctl.errors import UsageError
from dermctl.methods.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomGaussianBlur,
    RandomSolarize,
    color_distortion,
    normalize,
)

# Layout of one view's photometric parameter vector (float32), as collated into (B, N_PARAMS).
JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4
ORDER = slice(5, 9)  # torchvision's fn_idx: 0 brightness, 1 contrast, 2 saturation, 3 hue
GRAY, BLUR, SIGMA, SOLARIZE = 9, 10, 11, 12
N_PARAMS = 13
PHOTO_SUFFIX = "_photo"  # batch key of the parameters of the views under key K: K + PHOTO_SUFFIX

SOLARIZE_THRESHOLD = 128  # DINO / BYOL `Solarization`: ImageOps.solarize(img) with its default 128
LUMA = (0.299, 0.587, 0.114)  # PIL convert("L"), ITU-R 601-2


def resolve_gpu_augment(value: Any, device: torch.device | str) -> bool:
    """Config `gpu_augment`: true, false or "auto" (true on CUDA, false elsewhere, so CPU runs keep the
    per-image PIL pipeline and their exact numbers)."""
    if isinstance(value, str):
        value = {"true": True, "false": False, "auto": "auto"}.get(value.strip().lower(), value)
    if isinstance(value, str) and value == "auto":
        return torch.device(device).type == "cuda"
    if isinstance(value, bool):
        return value
    raise UsageError(f"config key 'gpu_augment' = {value!r}: expected true, false or \"auto\"")


def photometric_on_device(method: torch.nn.Module, cfg: dict[str, Any]) -> bool:
    """Whether `method`'s views leave their photometric part to the device: config `gpu_augment`
    resolved against the device the method's parameters are on (the engine moves the method to its
    device before asking for transforms)."""
    param = next(method.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return resolve_gpu_augment(cfg.get("gpu_augment", "auto"), device)


# -- policies -------------------------------------------------------------------------------------------


@dataclass
class PhotometricPolicy:
    """The colour part of one view: `ColorJitter(brightness, contrast, saturation, hue)` with probability
    `p_jitter`, grayscale with `p_gray`, Gaussian blur with `p_blur` (None: no blur step, no random draw),
    solarisation with `p_solarize` (None: no step; 0.0 still draws, as BYOL's view 1 does)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float | None = None
    p_solarize: float | None = None
    radius: tuple[float, float] = (0.1, 2.0)
    _jitter: T.ColorJitter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # torchvision turns strengths into ranges (brightness 0.4 -> (0.6, 1.4); 0 -> None, never drawn)
        self._jitter = T.ColorJitter(self.brightness, self.contrast, self.saturation, self.hue)

    def pil_steps(self) -> list[Callable[[Image.Image], Image.Image]]:
        """The per-image PIL steps of the official pipelines (the reference the device path follows)."""
        steps: list[Callable[[Image.Image], Image.Image]] = [
            color_distortion(
                self.brightness, self.contrast, self.saturation, self.hue, self.p_jitter, self.p_gray
            )
        ]
        if self.p_blur is not None:
            steps.append(RandomGaussianBlur(self.p_blur, *self.radius))
        if self.p_solarize is not None:
            steps.append(RandomSolarize(self.p_solarize))
        return steps

    def draw(self) -> torch.Tensor:
        """One view's parameters (N_PARAMS,), drawn from the global torch / python RNGs with the same calls
        in the same order as `pil_steps()` makes (RandomApply, ColorJitter.get_params, RandomGrayscale,
        RandomGaussianBlur, RandomSolarize)."""
        # a plain list, one tensor at the end: ten views per image make per-element tensor writes costly
        p = [0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0]
        if not self.p_jitter < torch.rand(1):  # T.RandomApply
            j = self._jitter
            fn_idx, b, c, s, h = T.ColorJitter.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            p[JITTER] = 1.0
            p[ORDER] = [float(i) for i in fn_idx.tolist()]
            for col, value in ((BRIGHTNESS, b), (CONTRAST, c), (SATURATION, s), (HUE, h)):
                if value is not None:
                    p[col] = value
        if torch.rand(1) < self.p_gray:  # T.RandomGrayscale
            p[GRAY] = 1.0
        if self.p_blur is not None and random.random() < self.p_blur:  # RandomGaussianBlur
            p[BLUR] = 1.0
            p[SIGMA] = random.uniform(*self.radius)
        if self.p_solarize is not None and random.random() < self.p_solarize:  # RandomSolarize
            p[SOLARIZE] = 1.0
        return torch.tensor(p, dtype=torch.float32)


@dataclass
class ViewPolicy:
    """One augmented view: RandomResizedCrop(size, scale, bicubic) and horizontal flip (geometric), then
    `photometric`, then normalisation."""

    size: int
    scale: tuple[float, float]
    photometric: PhotometricPolicy
    hflip_p: float = 0.5

    def geometric_steps(self) -> list[Callable[[Image.Image], Image.Image]]:
        return [
            T.RandomResizedCrop(self.size, scale=self.scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=self.hflip_p),
        ]

    def pil_pipeline(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> T.Compose:
        """The whole view per image on PIL (the official pipeline): normalised float tensor out."""
        return T.Compose([*self.geometric_steps(), *self.photometric.pil_steps(), normalize(mean, std)])

    def split_pipeline(self) -> SplitView:
        """Geometric steps to a uint8 tensor plus the drawn photometric parameters."""
        return SplitView(self.size, self.scale, self.photometric, self.hflip_p)


class SplitView:
    """PIL image -> (uint8 (3, H, W) crop, photometric parameters (N_PARAMS,)): the worker's share.

    The crop is `geometric_steps()` done lean: torchvision's RandomResizedCrop.get_params and flip coin
    (the same draws), then PIL crop + bicubic resize and flip, as torchvision does on PIL images."""

    ratio = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range

    def __init__(
        self, size: int, scale: tuple[float, float], photometric: PhotometricPolicy, hflip_p: float = 0.5
    ) -> None:
        self.size, self.scale, self.photometric, self.hflip_p = size, tuple(scale), photometric, hflip_p

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, h, w = T.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        out = img.crop((left, top, left + w, top + h)).resize(
            (self.size, self.size), Image.Resampling.BICUBIC
        )
        if torch.rand(1) < self.hflip_p:  # T.RandomHorizontalFlip
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)
        return crop, self.photometric.draw()

    def __repr__(self) -> str:
        return f"SplitView({self.size}px scale {self.scale}, flip {self.hflip_p}, {self.photometric!r})"


class ViewSet:
    """Named lists of views of one image (e.g. {"globals": [...], "locals": [...]}).

    Per image, PIL mode returns {key: [normalised float tensors]}; with `device_photometric` it returns
    {key: [uint8 crops], key + "_photo": [parameter vectors]}, and `augment_batch` finishes the views on the
    device. Views are drawn key by key, view by view, in order, so both modes consume the RNGs alike.
    Keys whose list is empty are left out (default_collate needs equal keys, not empty lists).
    """

    def __init__(
        self,
        views: dict[str, list[ViewPolicy]],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        device_photometric: bool = False,
    ) -> None:
        self.policies = {k: list(v) for k, v in views.items() if v}
        self.mean, self.std = tuple(mean), tuple(std)
        self.device_photometric = device_photometric
        # one pipeline per distinct policy object (8 local crops share one Compose, as in the official code)
        self._pipelines: dict[int, tuple[ViewPolicy, T.Compose, SplitView]] = {}
        for policies in self.policies.values():
            for p in policies:
                self.pil(p)

    def pil(self, policy: ViewPolicy) -> T.Compose:
        """The per-image PIL pipeline of a view (built once per policy object)."""
        if id(policy) not in self._pipelines:
            pipes = (policy, policy.pil_pipeline(self.mean, self.std), policy.split_pipeline())
            self._pipelines[id(policy)] = pipes
        return self._pipelines[id(policy)][1]

    def on_device(self, device_photometric: bool = True) -> ViewSet:
        """A copy of this view set with the photometric part on the device (or back on PIL)."""
        other = copy.copy(self)
        other.device_photometric = device_photometric
        return other

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        if not self.device_photometric:
            for key, policies in self.policies.items():
                out[key] = [self._pipelines[id(p)][1](img) for p in policies]
            return out
        photo: dict[str, list[torch.Tensor]] = {}
        for key, policies in self.policies.items():
            pairs = [self._pipelines[id(p)][2](img) for p in policies]
            out[key] = [c for c, _ in pairs]
            photo[key + PHOTO_SUFFIX] = [q for _, q in pairs]
        return {**out, **photo}


# -- the batched device-side step -------------------------------------------------------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black (PIL ImageEnhance.Brightness); one factor per sample."""
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean grey level of the sample (PIL ImageEnhance.Contrast)."""
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the sample's grayscale image (PIL ImageEnhance.Color)."""
    return _blend(x, _gray(x), factor)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `factor` turns (in [-0.5, 0.5]) in HSV space (torchvision's adjust_hue)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    flat = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(flat, ones, maxc)
    crd = torch.where(flat, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = (
        (maxc == r) * (bc - gc)
        + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
        + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    )
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + factor.view(-1, 1, 1), 1.0)
    v = maxc
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    # sector i -> (r, g, b) as in colorsys.hsv_to_rgb
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v], 1),
            torch.stack([t, v, v, q, p, p], 1),
            torch.stack([p, p, t, v, v, q], 1),
        ],
        1,
    )  # (N, 3, 6, H, W)
    idx = i.unsqueeze(1).unsqueeze(1).expand(-1, 3, 1, -1, -1)
    return table.gather(2, idx).squeeze(2)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, half_width: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample, edges replicated (as PIL's box blurs do).
    Each sample's kernel reaches ceil(3 sigma) pixels; `half_width` (default ceil(3 * max sigma)) only
    sizes the shared convolution."""
    n, c, h, w = x.shape
    if half_width is None:
        half_width = max(1, math.ceil(3 * float(sigma.max())))
    r = half_width
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    sig = sigma.to(x.dtype).view(-1, 1)
    # each sample's own support ceil(3 sigma): the result does not depend on the rest of the batch
    k = torch.exp(-0.5 * (t / sig) ** 2) * (t.abs() <= torch.ceil(3 * sig).clamp(min=1))
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, 2r + 1)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def _rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    idx = mask.nonzero().flatten()
    return idx.to(device, non_blocking=True) if idx.numel() else None


def apply_photometric(
    crops: torch.Tensor,
    params: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 crops (N, 3, H, W) + their parameters (N, N_PARAMS) -> normalised float32 views, on the
    crops' device: jitter (per-sample order), grayscale, blur, solarize, normalise. Runs in float32
    without autograd whatever autocast is active."""
    device = crops.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        x = crops.to(torch.float32).div_(255.0)
        host = params.detach().to("cpu", torch.float32)  # which rows get what: decided on the host
        dev = params.detach().to(device, torch.float32, non_blocking=True)
        jitter = host[:, JITTER] > 0.5
        order = host[:, ORDER].long()
        for position in range(4):
            for op, fn in enumerate(_JITTER_OPS):
                mask = jitter & (order[:, position] == op)
                if op == 3:
                    mask &= host[:, HUE] != 0  # hue 0 is the identity; skip the HSV round trip
                rows = _rows(mask, device)
                if rows is not None:
                    x[rows] = fn(x[rows], dev[rows, BRIGHTNESS + op])
        rows = _rows(host[:, GRAY] > 0.5, device)
        if rows is not None:
            x[rows] = _gray(x[rows]).expand(-1, 3, -1, -1)
        blur = host[:, BLUR] > 0.5
        rows = _rows(blur, device)
        if rows is not None:
            half = max(1, math.ceil(3 * float(host[blur, SIGMA].max())))
            x[rows] = gaussian_blur(x[rows], dev[rows, SIGMA], half)
        solar = (dev[:, SOLARIZE] > 0.5).view(-1, 1, 1, 1)
        # compared in float32, so the threshold is the float32 value of 128/255 (exact for uint8 input)
        x = torch.where(solar & (x >= SOLARIZE_THRESHOLD / 255.0), 1.0 - x, x)
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return (x - m) / s


def augment_batch(
    batch: dict[str, Any], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> dict[str, Any]:
    """Finish every view list K that has parameters under K + "_photo": all views of one resolution in
    one `apply_photometric` call, split back per view. A batch without parameters is returned as is
    (PIL mode, or already augmented), so calling this twice is harmless."""
    keys = [k for k in batch if k + PHOTO_SUFFIX in batch]
    if not keys:
        return batch
    out = {k: v for k, v in batch.items() if not k.endswith(PHOTO_SUFFIX)}
    for key in keys:
        views = list(batch[key])
        params = list(batch[key + PHOTO_SUFFIX])
        done: list[torch.Tensor | None] = [None] * len(views)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            by_size.setdefault(tuple(v.shape[1:]), []).append(i)
        for idx in by_size.values():
            x = apply_photometric(
                torch.cat([views[i] for i in idx]), torch.cat([params[i] for i in idx]), mean, std
            )
            for i, part in zip(idx, x.split([views[i].shape[0] for i in idx]), strict=True):
                done[i] = part
        out[key] = done
    return out
