"""ColorMe (Li et al. 2020, "ColorMe: Self-Supervised Skin Lesion Colour Representation"), as in the code
of Gröger et al.: a U-Net whose encoder (a timm ResNet with one input channel) sees only the green channel
of a skin image; its decoder reconstructs the red and blue channels, and a fully connected head on the
encoder's pooled features predicts the red and blue colour distribution (histograms).

Two loss conventions (config `loss_convention`):

study (default), the study authors' code (trainers/colorme_trainer.py, datasets/wrappers/colorme_wrapper.py,
models/colorme/model.py of their package `self-supervised-dermatology` 0.0.16):
    loss = mse_weight * MSE(cat[pred_R, input_G, pred_B], ImageNet-normalised RGB)     (linear U-Net output)
         + kl_weight * KL(hist || softmax over all 2 * bins outputs)                    (10 : 1)
    hist: `hist_bins` bins on [0, 1] per colour, divided by the count over both colours (sums to 1).
per_channel (dermctl 0.1.0, kept bit for bit):
    loss = mse_weight * MSE(sigmoid output, red/blue in [0, 1])
         + kl_weight * KL(per-colour hist || per-colour softmax)                        (each sums to 1)

In both, the encoder sees the ImageNet-normalised green channel. It is exported as a plain timm model
(`num_classes=0`, `in_chans=1`); its backbone.json says `channels: "green"`, so embedding feeds it only the
green channel, normalised with ImageNet's green mean/std, as in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from dermctl.errors import UsageError
from dermctl.methods.base import ENGINE_DEFAULTS, PretrainMethod, StepContext, register_method
from dermctl.methods.collapse import l2_normalized_std
from dermctl.models.backbone import BackboneMeta, create_backbone

GREEN_MEAN = 0.456  # ImageNet mean/std of the green channel
GREEN_STD = 0.224
RB_MEAN = (0.485, 0.406)  # ImageNet mean/std of red and blue: the study convention's targets
RB_STD = (0.229, 0.225)
LOSS_CONVENTIONS = ("study", "per_channel")
HIST_RANGES = ("raw", "normalised_clipped")


def colour_histograms(rb: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Target colour distributions: (B, 2, H, W) red/blue in [0, 1] -> (B, 2 * bins).

    Each channel's values are counted in `bins` equal-width bins on [0, 1] (bin k holds [k/bins,
    (k+1)/bins), the last bin also holds 1.0 — `numpy.histogram(v, bins, range=(0, 1))`), and the counts
    are divided by the number of pixels, so red's `bins` values sum to 1 and so do blue's. Output order:
    red bins, then blue bins.

    >>> rb = torch.zeros(1, 2, 2, 2); rb[:, 0, 0] = 1.0  # red: half 0, half 1; blue: all 0
    >>> colour_histograms(rb, bins=5)
    tensor([[0.5000, 0.0000, 0.0000, 0.0000, 0.5000, 1.0000, 0.0000, 0.0000, 0.0000, 0.0000]])
    """
    if rb.ndim != 4 or rb.shape[1] != 2:
        raise ValueError(f"colour_histograms: expected (B, 2, H, W) red/blue, got {tuple(rb.shape)}")
    b = rb.shape[0]
    idx = (rb.detach().float().clamp(0, 1) * bins).long().clamp(max=bins - 1).flatten(2)  # (B, 2, HW)
    counts = torch.zeros(b, 2, bins, device=rb.device, dtype=torch.float32)
    counts.scatter_add_(2, idx, torch.ones_like(idx, dtype=torch.float32))
    return (counts / idx.shape[-1]).reshape(b, 2 * bins)


def normalise_rb(rb: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) red/blue in [0, 1] -> ImageNet-normalised red/blue (the study convention's targets)."""
    mean = torch.tensor(RB_MEAN, device=rb.device, dtype=rb.dtype).view(1, 2, 1, 1)
    std = torch.tensor(RB_STD, device=rb.device, dtype=rb.dtype).view(1, 2, 1, 1)
    return (rb - mean) / std


def joint_colour_histograms(rb: torch.Tensor, bins: int = 5, hist_range: str = "raw") -> torch.Tensor:
    """The study's target: one distribution over all 2 * bins red and blue bins: (B, 2, H, W) -> (B, 2 * bins).

    Counts as `colour_histograms` (bins on [0, 1], 1.0 in the last bin; red bins, then blue bins), divided by
    the count over BOTH colours (datasets/wrappers/colorme_wrapper.py: `hist / torch.sum(hist)`), so the
    2 * bins values sum to 1 (each colour to 0.5 with `hist_range="raw"`).

    hist_range "raw": the raw [0, 1] values, every pixel counted. "normalised_clipped": the authors' bug,
    reproduced on request: `torch.histogram(range=(0, 1))` of the ImageNet-NORMALISED values, which drops
    every value outside [0, 1] (raw red below 0.485 or above 0.714, blue below 0.406 or above 0.631). An
    image with no counted pixel (the authors' code divides 0 by 0 there) gets an all-zero target and so
    adds nothing to the KL.

    >>> rb = torch.zeros(1, 2, 2, 2); rb[:, 0, 0] = 1.0  # red: half 0, half 1; blue: all 0
    >>> joint_colour_histograms(rb, bins=5)
    tensor([[0.2500, 0.0000, 0.0000, 0.0000, 0.2500, 0.5000, 0.0000, 0.0000, 0.0000, 0.0000]])
    """
    if rb.ndim != 4 or rb.shape[1] != 2:
        raise ValueError(f"joint_colour_histograms: expected (B, 2, H, W) red/blue, got {tuple(rb.shape)}")
    if hist_range not in HIST_RANGES:
        raise ValueError(
            f"joint_colour_histograms: hist_range must be one of {HIST_RANGES}, got {hist_range!r}"
        )
    b = rb.shape[0]
    v = rb.detach().float()
    if hist_range == "normalised_clipped":
        v = normalise_rb(v)
    inside = ((v >= 0) & (v <= 1)).float().flatten(2)  # "raw": every pixel of a [0, 1] image
    idx = (v.clamp(0, 1) * bins).long().clamp(max=bins - 1).flatten(2)  # (B, 2, HW)
    counts = torch.zeros(b, 2, bins, device=rb.device, dtype=torch.float32)
    counts.scatter_add_(2, idx, inside)
    counts = counts.reshape(b, 2 * bins)
    return counts / counts.sum(1, keepdim=True).clamp_min(1.0)


def colour_distribution_kl(
    logits: torch.Tensor, target: torch.Tensor, bins: int = 5, reduction: str = "sum", joint: bool = False
) -> torch.Tensor:
    """KL(target || predicted) of the red and blue colour distributions.

    `logits` (B, 2 * bins) are turned into distributions by a softmax over each `bins`-group (red, blue:
    `target` from `colour_histograms`), or with `joint=True` by ONE softmax over all 2 * bins outputs (the
    study's models/colorme/model.py `Softmax(dim=-1)` on `Linear(features, 10)`; `target` from
    `joint_colour_histograms`). Per image, t * (log t - log p) is summed over all 2 * bins entries (0 log 0
    = 0, as torch's KLDivLoss). `reduction`: "sum" sums over images (the default, as the study's code:
    KLDivLoss(reduction="sum")); "batchmean" averages over images (independent of the batch size).
    log_softmax replaces the authors' `softmax(...).log()`: the same value, without log(0) when a
    probability underflows.

    >>> t = torch.tensor([[1.0, 0, 0, 0, 0] * 2])
    >>> colour_distribution_kl(torch.zeros(1, 10), t)  # uniform prediction: 2 * log 5
    tensor(3.2189)
    """
    b = logits.shape[0]
    groups = 1 if joint else 2
    log_p = F.log_softmax(logits.float().reshape(b, groups, -1), dim=-1).reshape(b, 2 * bins)
    kl = F.kl_div(log_p, target.float(), reduction="sum")
    if reduction == "batchmean":
        return kl / b
    if reduction == "sum":
        return kl
    raise ValueError(f"colour_distribution_kl: reduction must be 'batchmean' or 'sum', got {reduction!r}")


class ColorMeLoss(nn.Module):
    """The per_channel convention (dermctl 0.1.0): mse_weight * MSE(recon, rb) + kl_weight * KL(hist_target ||
    per-colour softmax(hist_logits)), with `recon` and `rb` the red/blue channels in [0, 1].

    >>> criterion = ColorMeLoss(mse_weight=10.0, kl_weight=1.0, bins=5)
    >>> loss, parts = criterion(recon, rb, hist_logits, colour_histograms(rb, 5))
    """

    def __init__(
        self, mse_weight: float = 10.0, kl_weight: float = 1.0, bins: int = 5, kl_reduction: str = "sum"
    ) -> None:
        super().__init__()
        self.mse_weight, self.kl_weight, self.bins, self.kl_reduction = (
            mse_weight,
            kl_weight,
            bins,
            kl_reduction,
        )

    def forward(
        self,
        recon: torch.Tensor,
        rb: torch.Tensor,
        hist_logits: torch.Tensor,
        hist_target: torch.Tensor,
        kl_scale: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, {"mse", "kl"} detached). `kl_scale` multiplies the KL term (the engine's DDP
        correction for a batch sum); 1 everywhere else."""
        mse = F.mse_loss(recon.float(), rb.float())
        kl = colour_distribution_kl(hist_logits, hist_target, self.bins, self.kl_reduction)
        return self.mse_weight * mse + self.kl_weight * kl_scale * kl, {
            "mse": mse.detach(),
            "kl": kl.detach(),
        }


class ColorMeStudyLoss(nn.Module):
    """The study convention (trainers/colorme_trainer.py `_model_step`):
    mse_weight * MSE(cat[pred_R, green_in, pred_B], cat[R, green_in, B]) + kl_weight * KL(hist || softmax),
    all channels ImageNet-normalised, the softmax taken over all 2 * bins outputs at once.

    The MSE is the mean over the THREE channels, the green one being the input itself: it adds no error, so
    the MSE is 2/3 of the red/blue mean. We keep that factor: the authors' 10 : 1 weights were set with it,
    and it is their convention, not a bug (it changes the balance, not what is learned from each channel).

    >>> criterion = ColorMeStudyLoss(mse_weight=10.0, kl_weight=1.0, bins=5)
    >>> loss, parts = criterion(pred_rb, green, normalise_rb(rb), hist_logits, joint_colour_histograms(rb))
    """

    def __init__(
        self, mse_weight: float = 10.0, kl_weight: float = 1.0, bins: int = 5, kl_reduction: str = "sum"
    ) -> None:
        super().__init__()
        self.mse_weight, self.kl_weight, self.bins, self.kl_reduction = (
            mse_weight,
            kl_weight,
            bins,
            kl_reduction,
        )

    def forward(
        self,
        pred_rb: torch.Tensor,
        green: torch.Tensor,
        rb_target: torch.Tensor,
        hist_logits: torch.Tensor,
        hist_target: torch.Tensor,
        kl_scale: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """pred_rb (B, 2, H, W) linear output; green (B, 1, H, W) the normalised input; rb_target (B, 2, H, W)
        normalised red/blue. Returns (total loss, {"mse", "kl"} detached, unweighted). `kl_scale` multiplies
        the KL term (the engine's DDP correction for a batch sum); 1 everywhere else."""
        pred = torch.cat([pred_rb[:, :1], green, pred_rb[:, 1:]], dim=1).float()
        target = torch.cat([rb_target[:, :1], green, rb_target[:, 1:]], dim=1).float()
        mse = F.mse_loss(pred, target)
        kl = colour_distribution_kl(hist_logits, hist_target, self.bins, self.kl_reduction, joint=True)
        return self.mse_weight * mse + self.kl_weight * kl_scale * kl, {
            "mse": mse.detach(),
            "kl": kl.detach(),
        }


class _DecoderBlock(nn.Module):
    """smp.Unet's DecoderBlock (segmentation_models_pytorch decoders/unet/decoder.py, attention None):
    nearest upsampling, concatenation of the skip, two Conv2dReLU = 3x3 conv (no bias) - BN - ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        # smp: F.interpolate(scale_factor=2, mode="nearest"). Interpolating to the skip's size is the same
        # map (index floor(i / 2)) whenever the input side is a multiple of 32, where smp requires it, and
        # also handles other sizes (odd stage sizes).
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class ColorMeUNet(nn.Module):
    """smp.Unet(encoder, in_channels=1, classes=out_chans) (models/colorme/model.py) on a timm CNN encoder,
    with the authors' histogram head (`MLPHead`: Linear(features, 2 * bins)) on the encoder's pooled output.

    Layer by layer against smp 0.3 (decoders/unet/{model,decoder}.py, base/heads.py, encoders/resnet.py):
    - skips: smp's ResNet encoder stages (conv1-bn1-relu at stride 2; maxpool+layer1, layer2, layer3,
      layer4) are exactly timm's `forward_intermediates` outputs (act1, layer1..layer4); smp drops the
      stride-1 identity stage, as here. Deepest map first; the last block has no skip.
    - blocks: in = [deepest channels, *decoder_channels[:-1]], skip = [reversed shallower channels, 0],
      out = decoder_channels (smp default (256, 128, 64, 32, 16)); no centre block (smp: center=False).
    - head: Conv2d(decoder_channels[-1], out_chans, 3, padding=1), no upsampling; activation None in smp
      (linear, the study convention); a sigmoid with `sigmoid_output` (the per_channel convention).
    - init with `smp_init`: decoder convs kaiming_uniform(fan_in, relu), BN 1/0, head xavier_uniform, zero
      biases (smp base/initialization.py); the histogram head keeps torch's default, as the authors' MLPHead.
      Without `smp_init` (per_channel, dermctl 0.1.0), torch's default init throughout.
    - histogram head: Linear on models/colorme/model.py's embedding (encoder's last map, adaptive average
      pool) = timm's `forward_head` with num_classes=0, the exported feature.
    Returns (reconstruction, hist logits, pooled features).
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        out_chans: int = 2,
        bins: int = 5,
        sigmoid_output: bool = True,
        smp_init: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.sigmoid_output = sigmoid_output
        enc_ch = [int(f["num_chs"]) for f in encoder.feature_info]
        if len(decoder_channels) != len(enc_ch):
            raise UsageError(
                f"decoder_channels: need {len(enc_ch)} values (one per encoder stage), got {list(decoder_channels)}"
            )
        skips = [*reversed(enc_ch[:-1]), 0]  # skip channels per block, deepest first; last block: none
        ins = [enc_ch[-1], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            _DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.head = nn.Conv2d(decoder_channels[-1], out_chans, 3, padding=1)
        self.hist_head = nn.Linear(int(encoder.num_features), 2 * bins)
        if smp_init:
            self._init_like_smp()

    def _init_like_smp(self) -> None:
        for m in self.blocks.modules():  # smp initialize_decoder
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.head.weight)  # smp initialize_head
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) green -> reconstruction (B, out_chans, H, W) (in [0, 1] with the sigmoid, else
        linear), hist logits, pooled features."""
        final, feats = self.encoder.forward_intermediates(x, intermediates_only=False)
        pooled = self.encoder.forward_head(final)
        y = feats[-1]
        skips: list[torch.Tensor | None] = [*reversed(feats[:-1]), None]
        for block, skip in zip(self.blocks, skips, strict=True):
            size = tuple(skip.shape[-2:]) if skip is not None else tuple(x.shape[-2:])
            y = block(y, skip, size)
        recon = self.head(y)
        return (torch.sigmoid(recon) if self.sigmoid_output else recon), self.hist_head(pooled), pooled


VIEWS = ("resize", "crop")


class ColorMeTransform:
    """ColorMe's input: `views = "resize"` squashes the whole image to image_size x image_size (the authors'
    datasets/wrappers/colorme_wrapper.py: `transforms.Resize((h, w))`, no augmentation); `"crop"` takes a
    random resized crop (scale (crop_scale_min, 1)) and a horizontal flip. Never colour augmentation: colour
    is the target. Returns the normalised green channel (1, H, W) as input and the red and blue channels
    (2, H, W) in [0, 1]; the study convention normalises them in the step (`normalise_rb`), after its
    histograms of the raw values."""

    def __init__(
        self, image_size: int = 224, crop_scale_min: float = 0.08, hflip_p: float = 0.5, views: str = "crop"
    ) -> None:
        if views not in VIEWS:
            raise UsageError(f"config views: {views!r} is not one of {', '.join(VIEWS)}")
        geometry: list[Any] = (
            [T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR)]
            if views == "resize"
            else [
                T.RandomResizedCrop(
                    image_size, scale=(crop_scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(p=hflip_p),
            ]
        )
        self.view = T.Compose([*geometry, T.ToTensor()])

    def __call__(self, img: Image.Image) -> dict[str, Any]:
        rgb = self.view(img)
        return {"green": (rgb[1:2] - GREEN_MEAN) / GREEN_STD, "rb": rgb[[0, 2]]}


_AUTHORS = "authors' code"


@register_method
class ColorMe(PretrainMethod):
    """ColorMe on a timm CNN (ResNet-50 in Gröger et al.) seeing only the green channel."""

    name = "colorme"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            {
                "backbone": "resnet50.tv_in1k",
                "init": "imagenet",
                "optimizer": "sgd",
                "sgd_momentum": 0.0,
                "batch_size": 50,
                "lr": 1e-3,
                "lr_scaling": "none",
                "lr_schedule": "none",
                "weight_decay": 0.0,
                "loss_convention": "study",
                "hist_range": "raw",
                "mse_weight": 10.0,
                "kl_weight": 1.0,
                "hist_bins": 5,
                "kl_reduction": "sum",
                "decoder_channels": [256, 128, 64, 32, 16],
                "views": "resize",
                "crop_scale_min": 0.08,
                "hflip_p": 0.5,
            }
        )
        return cfg

    # "authors' code" = Gröger et al.'s package self-supervised-dermatology 0.0.16; smp = its U-Net library.
    default_sources: ClassVar[dict[str, str]] = {
        "backbone": "Gröger et al. Table 1 (ResNet-50); .tv_in1k = the torchvision ImageNet weights of the authors' code",
        "init": f"{_AUTHORS} models/colorme/model.py: smp.Unet(encoder_weights='imagenet', in_channels=1)",
        "optimizer": "Gröger et al. Table 1 (SGD)",
        "sgd_momentum": f"{_AUTHORS} trainers/base_trainer.py get_optimizer: SGD(params, lr, wd), no momentum",
        "batch_size": "Gröger et al. Table 1 (50)",
        "lr": "Gröger et al. Table 1 (1e-3)",
        "lr_scaling": f"{_AUTHORS} trainers/base_trainer.py update_optim_from_schedulers: no schedule, lr as is",
        "lr_schedule": "Gröger et al. Table 1 (none)",
        "weight_decay": "dermctl: none (the authors' value is in an unshipped config)",
        "loss_convention": f"{_AUTHORS} trainers/colorme_trainer.py _model_step (per_channel: dermctl 0.1.0)",
        "hist_range": "dermctl: raw [0, 1] values (the authors' normalised_clipped drops part of the range)",
        "mse_weight": f"{_AUTHORS} trainers/colorme_trainer.py (MSE : KL = 10 : 1)",
        "kl_weight": f"{_AUTHORS} trainers/colorme_trainer.py (MSE : KL = 10 : 1)",
        "hist_bins": f"{_AUTHORS} datasets/wrappers/colorme_wrapper.py: torch.histogram(bins=5) per colour",
        "kl_reduction": f"{_AUTHORS} trainers/colorme_trainer.py: KLDivLoss(reduction='sum')",
        "decoder_channels": f"{_AUTHORS} models/colorme/model.py: smp.Unet default (256, 128, 64, 32, 16)",
        "views": "authors' code datasets/wrappers/colorme_wrapper.py: resize only, no augmentation",
        "crop_scale_min": "dermctl: with views = crop (the authors' code does not crop)",
        "hflip_p": "dermctl: with views = crop (the authors' code does not flip)",
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        bins = int(cfg["hist_bins"])
        if bins < 1:
            raise UsageError(f"hist_bins: must be >= 1, got {cfg['hist_bins']}")
        if cfg["kl_reduction"] not in ("batchmean", "sum"):
            raise UsageError(f"kl_reduction: expected 'batchmean' or 'sum', got {cfg['kl_reduction']!r}")
        if cfg["views"] not in VIEWS:  # up front, not in the first loader worker
            raise UsageError(f"config views: {cfg['views']!r} is not one of {', '.join(VIEWS)}")
        if cfg["loss_convention"] not in LOSS_CONVENTIONS:
            raise UsageError(
                f"loss_convention: expected {' or '.join(LOSS_CONVENTIONS)}, got {cfg['loss_convention']!r}"
            )
        if cfg["hist_range"] not in HIST_RANGES:
            raise UsageError(
                f"hist_range: expected one of {', '.join(HIST_RANGES)}, got {cfg['hist_range']!r}"
            )
        if cfg["hist_range"] != "raw" and cfg["loss_convention"] != "study":
            raise UsageError("hist_range: 'normalised_clipped' needs loss_convention = study")
        self.study = cfg["loss_convention"] == "study"
        encoder = create_backbone(
            cfg["backbone"], cfg["init"], in_chans=1, model_kwargs=cfg["backbone_kwargs"]
        )
        if not hasattr(encoder, "forward_intermediates") or not hasattr(encoder, "feature_info"):
            raise UsageError(
                f"--backbone: ColorMe needs a timm CNN with forward_intermediates, got {cfg['backbone']!r}"
            )
        self.unet = ColorMeUNet(
            encoder,
            [int(c) for c in cfg["decoder_channels"]],
            out_chans=2,
            bins=bins,
            sigmoid_output=not self.study,
            smp_init=self.study,
        )
        weights = (float(cfg["mse_weight"]), float(cfg["kl_weight"]), bins, str(cfg["kl_reduction"]))
        self.criterion: ColorMeLoss | ColorMeStudyLoss = (
            ColorMeStudyLoss(*weights) if self.study else ColorMeLoss(*weights)
        )

    @property
    def encoder(self) -> nn.Module:
        return self.unet.encoder

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        c = self.cfg
        return ColorMeTransform(
            int(c["image_size"]), float(c["crop_scale_min"]), float(c["hflip_p"]), str(c["views"])
        )

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        green, rb = batch["green"], batch["rb"]
        recon, hist_logits, pooled = self.unet(green)
        # With a sum over the batch, DDP's gradient averaging would divide the KL term by the world size:
        # scale the local sum by it so that the term stays a sum over the GLOBAL batch and a DDP run equals
        # one process at the same global batch (dermctl's rule for every method; the authors' code summed
        # per process, which equals this on one GPU).
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        kl_scale = float(world) if self.criterion.kl_reduction == "sum" else 1.0
        if self.study:
            target = joint_colour_histograms(rb, self.criterion.bins, str(self.cfg["hist_range"]))
            loss, parts = self.criterion(
                recon, green, normalise_rb(rb), hist_logits, target, kl_scale=kl_scale
            )
        else:
            target = colour_histograms(rb, self.criterion.bins)
            loss, parts = self.criterion(recon, rb, hist_logits, target, kl_scale=kl_scale)
        logs = {"mse": float(parts["mse"]), "kl": float(parts["kl"])}
        if pooled.shape[0] > 1:  # informative only; undefined for a single image
            logs["feature_std"] = float(l2_normalized_std(pooled))
        return loss, logs

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        # Both conventions feed the encoder the ImageNet-normalised green channel: the same metadata.
        return self.encoder, BackboneMeta(
            timm_name=self.cfg["backbone"],
            feature_rule="avgpool",
            input_size=int(self.cfg["image_size"]),
            mean=(GREEN_MEAN,),
            std=(GREEN_STD,),
            in_chans=1,
            channels="green",
            model_kwargs=dict(self.cfg["backbone_kwargs"]),
            extra={"method": self.name},
        )
