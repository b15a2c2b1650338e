"""ColorMe (Li et al. 2020, "ColorMe: Self-Supervised Skin Lesion Colour Representation"), as in the code
of Gröger et al.: a U-Net whose encoder (a timm ResNet with one input channel) sees only the green channel
of a skin image; its decoder reconstructs the red and blue channels, and a fully connected head on the
encoder's pooled features predicts the red and blue colour distributions (histograms).

Loss = mse_weight * MSE(reconstructed red/blue, true red/blue)
     + kl_weight * KL(true histograms || predicted histograms)        (10 : 1 in the study's code)

The encoder is exported as a plain timm model (`num_classes=0`, `in_chans=1`); its backbone.json says
`channels: "green"`, so embedding feeds it only the green channel, normalised with ImageNet's green
mean/std.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from dermctl.errors import UsageError
from dermctl.methods.base import ENGINE_DEFAULTS, PretrainMethod, StepContext, register_method
from dermctl.methods.simclr import l2_normalized_std
from dermctl.models.backbone import BackboneMeta, create_backbone

GREEN_MEAN = 0.456  # ImageNet mean/std of the green channel
GREEN_STD = 0.224


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


def colour_distribution_kl(
    logits: torch.Tensor, target: torch.Tensor, bins: int = 5, reduction: str = "sum"
) -> torch.Tensor:
    """KL(target || predicted) of the red and blue colour distributions.

    `logits` (B, 2 * bins) are turned into two distributions by a softmax over each `bins`-group (red,
    blue); `target` is `colour_histograms`' output. Per image the KL divergences of red and blue are
    summed (sum over all 2 * bins entries of t * (log t - log p), with 0 log 0 = 0, as torch's
    KLDivLoss). `reduction`: "sum" sums over images (the default, as the study's code:
    KLDivLoss(reduction="sum")); "batchmean" averages over images (independent of the batch size).

    >>> t = torch.tensor([[1.0, 0, 0, 0, 0] * 2])
    >>> colour_distribution_kl(torch.zeros(1, 10), t)  # uniform prediction: 2 * log 5
    tensor(3.2189)
    """
    b = logits.shape[0]
    log_p = F.log_softmax(logits.float().reshape(b, 2, bins), dim=-1).reshape(b, 2 * bins)
    kl = F.kl_div(log_p, target.float(), reduction="sum")
    if reduction == "batchmean":
        return kl / b
    if reduction == "sum":
        return kl
    raise ValueError(f"colour_distribution_kl: reduction must be 'batchmean' or 'sum', got {reduction!r}")


class ColorMeLoss(nn.Module):
    """ColorMe's loss: mse_weight * MSE(recon, rb) + kl_weight * KL(hist_target || softmax(hist_logits)).

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


class _DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate it, two 3x3 conv-BN-ReLU (the U-Net / smp.Unet block)."""

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
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class ColorMeUNet(nn.Module):
    """U-Net on a timm CNN encoder: the encoder's intermediate maps (`forward_intermediates`, deepest first
    after the bottleneck) are the skips; one decoder block per encoder stage, the last one back to the input
    resolution; a 3x3 conv to `out_chans` with a sigmoid. The histogram head is a linear layer on the
    encoder's global-average-pooled output (the exported feature). Returns (reconstruction, hist logits)."""

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        out_chans: int = 2,
        bins: int = 5,
    ) -> None:
        super().__init__()
        self.encoder = encoder
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) green -> reconstruction (B, out_chans, H, W) in [0, 1], hist logits, pooled features."""
        final, feats = self.encoder.forward_intermediates(x, intermediates_only=False)
        pooled = self.encoder.forward_head(final)
        y = feats[-1]
        skips: list[torch.Tensor | None] = [*reversed(feats[:-1]), None]
        for block, skip in zip(self.blocks, skips, strict=True):
            size = tuple(skip.shape[-2:]) if skip is not None else tuple(x.shape[-2:])
            y = block(y, skip, size)
        return torch.sigmoid(self.head(y)), self.hist_head(pooled), pooled


class ColorMeTransform:
    """Random resized crop (scale (crop_scale_min, 1)) and horizontal flip only: colour is the target, so no
    colour augmentation. Returns the normalised green channel (1, H, W) as input and the red and blue
    channels (2, H, W) in [0, 1] as targets."""

    def __init__(self, image_size: int = 224, crop_scale_min: float = 0.08, hflip_p: float = 0.5) -> None:
        self.view = T.Compose(
            [
                T.RandomResizedCrop(
                    image_size, scale=(crop_scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(p=hflip_p),
                T.ToTensor(),
            ]
        )

    def __call__(self, img: Image.Image) -> dict[str, Any]:
        rgb = self.view(img)
        return {"green": (rgb[1:2] - GREEN_MEAN) / GREEN_STD, "rb": rgb[[0, 2]]}


@register_method
class ColorMe(PretrainMethod):
    """ColorMe on a timm CNN (ResNet-50 in Gröger et al.) seeing only the green channel."""

    name = "colorme"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            {
                # Gröger et al. Table 1: SGD (momentum 0.9), batch 50, lr 1e-3, no schedule
                "backbone": "resnet50",
                "optimizer": "sgd",
                "sgd_momentum": 0.9,
                "batch_size": 50,
                "lr": 1e-3,
                "lr_schedule": "none",
                "weight_decay": 0.0,
                # the study's code: MSE : KL = 10 : 1, 5 bins per colour (10 outputs)
                "mse_weight": 10.0,
                "kl_weight": 1.0,
                "hist_bins": 5,
                "kl_reduction": "sum",  # the study's KLDivLoss(reduction="sum"); "batchmean" = per image
                # smp.Unet's default decoder channels, one per ResNet stage
                "decoder_channels": [256, 128, 64, 32, 16],
                # views: crop + flip only (colour is the target)
                "crop_scale_min": 0.08,
                "hflip_p": 0.5,
            }
        )
        return cfg

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        bins = int(cfg["hist_bins"])
        if bins < 1:
            raise UsageError(f"hist_bins: must be >= 1, got {cfg['hist_bins']}")
        if cfg["kl_reduction"] not in ("batchmean", "sum"):
            raise UsageError(f"kl_reduction: expected 'batchmean' or 'sum', got {cfg['kl_reduction']!r}")
        encoder = create_backbone(cfg["backbone"], cfg["init"], in_chans=1)
        if not hasattr(encoder, "forward_intermediates") or not hasattr(encoder, "feature_info"):
            raise UsageError(
                f"--backbone: ColorMe needs a timm CNN with forward_intermediates, got {cfg['backbone']!r}"
            )
        self.unet = ColorMeUNet(encoder, [int(c) for c in cfg["decoder_channels"]], out_chans=2, bins=bins)
        self.criterion = ColorMeLoss(
            float(cfg["mse_weight"]), float(cfg["kl_weight"]), bins, str(cfg["kl_reduction"])
        )

    @property
    def encoder(self) -> nn.Module:
        return self.unet.encoder

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        c = self.cfg
        return ColorMeTransform(int(c["image_size"]), float(c["crop_scale_min"]), float(c["hflip_p"]))

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        green, rb = batch["green"], batch["rb"]
        recon, hist_logits, pooled = self.unet(green)
        target = colour_histograms(rb, self.criterion.bins)
        # With a sum over the batch, DDP's gradient averaging would divide the KL term by the world size:
        # scale the local sum by it so that the term stays a sum over the GLOBAL batch, as one process.
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        kl_scale = float(world) if self.criterion.kl_reduction == "sum" else 1.0
        loss, parts = self.criterion(recon, rb, hist_logits, target, kl_scale=kl_scale)
        logs = {"mse": float(parts["mse"]), "kl": float(parts["kl"])}
        if pooled.shape[0] > 1:  # informative only; undefined for a single image
            logs["feature_std"] = float(l2_normalized_std(pooled))
        return loss, logs

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        return self.encoder, BackboneMeta(
            timm_name=self.cfg["backbone"],
            feature_rule="avgpool",
            input_size=int(self.cfg["image_size"]),
            mean=(GREEN_MEAN,),
            std=(GREEN_STD,),
            in_chans=1,
            channels="green",
            model_kwargs={},
            extra={"method": self.name},
        )
