"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two random views of each image go through the encoder and an MLP projection head; the NT-Xent loss pulls
the two projections of the same image together and pushes all other 2N-2 projections of the batch away.
The projection head is discarded at export: the encoder's global-average-pooled output is the feature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dermctl.errors import UsageError
from dermctl.methods.augment import IMAGENET_MEAN, IMAGENET_STD
from dermctl.methods.base import (
    ENGINE_DEFAULTS,
    PretrainMethod,
    StepContext,
    register_method,
    rgb_backbone_meta,
)
from dermctl.methods.collapse import l2_normalized_std, std_collapse_reason
from dermctl.methods.photometric import (
    PhotometricPolicy,
    ViewPolicy,
    ViewSet,
    augment_batch,
    photometric_on_device,
    resolve_gpu_augment,
)
from dermctl.models.backbone import BackboneMeta, create_backbone

# A feature std below this fraction of the healthy 1/sqrt(d) means the embeddings have collapsed.


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, differentiable (gradients flow back to the rank that produced them)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z), dim=0)


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, gather_distributed: bool = True
) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross entropy), eq. 1 of Chen et al. 2020.

    z1[i] and z2[i] are the projections of two views of image i. For each of the 2N anchors the positive is
    the other view of the same image and the negatives are the other 2N-2 projections; similarity is the
    cosine of L2-normalised projections divided by `temperature`; the loss is the mean over all 2N anchors
    of -log softmax(positive). Under torch.distributed (when `gather_distributed`), projections of all
    ranks are gathered with gradients so the negatives come from the global batch; each rank averages over
    its own anchors.

    >>> z1, z2 = torch.randn(8, 128), torch.randn(8, 128)
    >>> loss = nt_xent_loss(z1, z2, temperature=0.1)
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(
            f"nt_xent_loss: z1 and z2 must be (N, D) of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    rank, world = _world()
    if gather_distributed and world > 1:
        a1, a2 = _gather_with_grad(z1), _gather_with_grad(z2)
    else:
        rank, a1, a2 = 0, z1, z2
    # Rows: local anchors (views 1 then views 2); columns: all views 1 then all views 2 of the global batch.
    logits = torch.cat([z1, z2], dim=0) @ torch.cat([a1, a2], dim=0).T / temperature
    total = a1.shape[0]
    idx = torch.arange(n, device=z1.device) + rank * n
    self_cols = torch.cat([idx, idx + total])  # each anchor's own column: excluded
    pos_cols = torch.cat([idx + total, idx])  # the other view of the same image
    logits = logits.masked_fill(F.one_hot(self_cols, 2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_cols)


class NTXentLoss(nn.Module):
    """SimCLR's contrastive loss as a module; see `nt_xent_loss`.

    >>> criterion = NTXentLoss(temperature=0.1)
    >>> loss = criterion(projections_view1, projections_view2)
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"NTXentLoss: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z1, z2, self.temperature, self.gather_distributed)


class SimCLRProjectionHead(nn.Sequential):
    """g(.) of Chen et al. 2020 as the official code builds it (google-research/simclr, `ProjectionHead`
    with `proj_head_mode="nonlinear"`): Linear (no bias) - BatchNorm - ReLU, then Linear (no bias) -
    BatchNorm without centre (`LinearLayer(use_bias=False, use_bn=True)`: BN with `center=False`, no ReLU).
    2048 -> 2048 -> 128 on ResNet-50. lightly's `SimCLRProjectionHead` also ends with batch norm.

    The final BatchNorm matters: without it SimCLR learned about half as well on real images (issue 10;
    `final_bn=False` gives dermctl 0.1.0's head, kept for comparison).

    >>> head = SimCLRProjectionHead(2048)
    >>> z = head(torch.randn(8, 2048))  # (8, 128)
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, final_bn: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
        ]
        if final_bn:
            layers += [nn.Linear(hidden_dim, out_dim, bias=False), uncentered_batch_norm(out_dim)]
        else:
            layers += [nn.Linear(hidden_dim, out_dim)]
        super().__init__(*layers)


def uncentered_batch_norm(num_features: int) -> nn.BatchNorm1d:
    """BatchNorm1d with a learned scale but no shift (TF's `BatchNormalization(center=False)`): the shift is
    frozen at zero (requires_grad False), so no optimiser sees it; a plain BatchNorm1d otherwise, so that
    `sync_bn` converts it like every other."""
    bn = nn.BatchNorm1d(num_features)
    bn.bias.requires_grad_(False)
    return bn


class SimCLRTransform(ViewSet):
    """Two independent views per image (Chen et al. 2020, appendix A): random resized crop with scale
    (crop_scale_min, 1), horizontal flip, colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with p 0.8, grayscale
    p 0.2, Gaussian blur (sigma 0.1-2.0) with p `blur_p`, ImageNet normalisation. With `device_photometric`
    the views are uint8 crops + "views_photo" parameters, finished on the device (`augment_batch`)."""

    def __init__(
        self,
        image_size: int = 224,
        crop_scale_min: float = 0.08,
        color_strength: float = 1.0,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        blur_p: float = 0.5,
        hflip_p: float = 0.5,
        device_photometric: bool = False,
    ) -> None:
        s = color_strength
        colour = PhotometricPolicy(
            0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p_jitter=p_jitter, p_gray=p_gray, p_blur=blur_p
        )
        policy = ViewPolicy(image_size, (crop_scale_min, 1.0), colour, hflip_p)
        super().__init__({"views": [policy, policy]}, device_photometric=device_photometric)
        self.view = self.pil(policy)


@register_method
class SimCLR(PretrainMethod):
    """SimCLR on a timm CNN (ResNet-50 in Gröger et al.): encoder + projection head, NT-Xent loss."""

    name = "simclr"

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            {
                "backbone": "resnet50.tv_in1k",
                "init": "imagenet",
                "optimizer": "adam",
                "batch_size": 160,
                "lr": 3e-5,
                "lr_scaling": "linear256",
                "lr_schedule": "cosine",
                "weight_decay": 1e-6,
                "temperature": 0.1,
                "proj_hidden_dim": 2048,
                "proj_out_dim": 128,
                "proj_final_bn": True,
                "crop_scale_min": 0.08,
                "color_strength": 1.0,
                "p_jitter": 0.8,
                "p_gray": 0.2,
                "blur_p": 1.0,
                "hflip_p": 0.5,
                "gather_distributed": True,
            }
        )
        return cfg

    default_sources = {
        "backbone": "Gröger et al. Table 1 (ResNet-50); .tv_in1k = the torchvision ImageNet weights of the authors' code",
        "init": "authors' code models/simclr/model.py: torchvision resnet50(pretrained=True)",
        "optimizer": "Gröger et al. Table 1 (Adam)",
        "batch_size": "Gröger et al. Table 1 (160)",
        "lr": "Gröger et al. Table 1 (3e-5)",
        "lr_scaling": "authors' code trainers/simclr_trainer.py: cosine_scheduler(lr * batch * world / 256)",
        "lr_schedule": "Gröger et al. Table 1 (cosine)",
        "weight_decay": "Chen et al. 2020 sec. B.9 (1e-6; the authors' value is in an unshipped config)",
        "temperature": "Chen et al. 2020 (0.1 best at large batch; the authors' value is in an unshipped config)",
        "proj_hidden_dim": "Chen et al. 2020 / authors' code models/simclr/model.py (hidden = feature dim 2048)",
        "proj_out_dim": "Chen et al. 2020 (128)",
        "proj_final_bn": "official SimCLR code ProjectionHead (BN on every layer; the authors' head has none)",
        "crop_scale_min": "Chen et al. 2020 app. A / authors' code augmentations/simclr.py (0.08)",
        "color_strength": "Chen et al. 2020 app. A / authors' code augmentations/simclr.py (s = 1)",
        "p_jitter": "Chen et al. 2020 app. A / authors' code augmentations/simclr.py (0.8)",
        "p_gray": "Chen et al. 2020 app. A / authors' code augmentations/simclr.py (0.2)",
        "blur_p": "authors' code augmentations/simclr.py: GaussianBlur always applied (Chen et al.: 0.5)",
        "hflip_p": "Chen et al. 2020 app. A / authors' code augmentations/simclr.py (0.5)",
        "gather_distributed": "Chen et al. 2020 sec. 2: negatives from the global batch across devices",
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        if float(cfg["temperature"]) <= 0:
            raise UsageError(f"temperature: must be > 0, got {cfg['temperature']}")
        self.backbone = create_backbone(cfg["backbone"], cfg["init"], model_kwargs=cfg["backbone_kwargs"])
        in_dim = int(self.backbone.num_features)
        self.projection_head = SimCLRProjectionHead(
            in_dim, int(cfg["proj_hidden_dim"]), int(cfg["proj_out_dim"]), bool(cfg["proj_final_bn"])
        )
        self.criterion = NTXentLoss(float(cfg["temperature"]), bool(cfg["gather_distributed"]))
        resolve_gpu_augment(cfg.get("gpu_augment", "auto"), "cpu")

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        c = self.cfg
        return SimCLRTransform(
            int(c["image_size"]),
            float(c["crop_scale_min"]),
            float(c["color_strength"]),
            float(c["p_jitter"]),
            float(c["p_gray"]),
            float(c["blur_p"]),
            float(c["hflip_p"]),
            photometric_on_device(self, c),
        )

    def device_augment(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Colour jitter, grayscale, blur and normalisation of uint8 views, batched on the device."""
        return augment_batch(batch, IMAGENET_MEAN, IMAGENET_STD)

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.device_augment(batch, ctx)  # no-op when the engine already did it
        v1, v2 = batch["views"]
        n = v1.shape[0]
        # One forward over both views: BatchNorm statistics over the 2N images, as in SimCLR.
        z = self.projection_head(self.backbone(torch.cat([v1, v2], dim=0)).flatten(1))
        z1, z2 = z[:n].float(), z[n:].float()
        loss = self.criterion(z1, z2)
        return loss, {"feature_std": float(l2_normalized_std(z))}

    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        return std_collapse_reason(epoch_logs, int(self.cfg["proj_out_dim"]))

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        return self.backbone, rgb_backbone_meta(self.cfg, self.name, self.backbone)
