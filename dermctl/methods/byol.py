"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online network (encoder + projector + predictor) predicts the projection that a target network (an
exponential moving average of the online encoder + projector, never trained by gradients) makes of another
view of the same image. No negatives. The online encoder is exported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


def byol_regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of Grill et al. 2020: mean over the batch of ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z).

    `p` is the online prediction, `z` the target projection of the other view (no gradient flows into z).

    >>> loss = byol_regression_loss(prediction, target_projection)  # 0 when aligned, 2 when orthogonal
    """
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


class BYOLLoss(nn.Module):
    """Symmetrised BYOL loss L + L~ (Grill et al. 2020, sec. 3.1): the sum of both directions, each
    averaged over the batch, so its range is [0, 8].

    >>> criterion = BYOLLoss()
    >>> loss = criterion(p1, p2, z1_target, z2_target)  # p1 predicts z2_target, p2 predicts z1_target
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return byol_regression_loss(p1, z2) + byol_regression_loss(p2, z1)


class BYOLMLP(nn.Sequential):
    """BYOL's projector and predictor: Linear - BatchNorm - ReLU - Linear (in -> 4096 -> 256), layer for
    layer the official `MLP` (deepmind-research/byol, networks.py: hk.Linear with bias, BatchNorm with scale
    and offset, ReLU, hk.Linear) and the authors' models/byol/predictor.py. Both the projector and the
    predictor are trained; the authors' optimiser never received the predictor's parameters (a bug, not
    copied: docs/methods-cnn.md)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class BYOLTransform(ViewSet):
    """BYOL's asymmetric views (Grill et al. 2020, Table 6): both views get random resized crop (scale
    (crop_scale_min, 1)), flip, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8 and grayscale p 0.2; view 1
    is blurred with p 1.0 and never solarised, view 2 blurred with p 0.1 and solarised with p 0.2. With
    `device_photometric` the views are uint8 crops + "views_photo" parameters, finished on the device."""

    def __init__(
        self,
        image_size: int = 224,
        crop_scale_min: float = 0.08,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        blur_p: tuple[float, float] = (1.0, 0.1),
        solarize_p: tuple[float, float] = (0.0, 0.2),
        hflip_p: float = 0.5,
        device_photometric: bool = False,
    ) -> None:
        def view(blur: float, solarize: float) -> ViewPolicy:
            colour = PhotometricPolicy(
                *jitter, p_jitter=p_jitter, p_gray=p_gray, p_blur=blur, p_solarize=solarize
            )
            return ViewPolicy(image_size, (crop_scale_min, 1.0), colour, hflip_p)

        first, second = view(blur_p[0], solarize_p[0]), view(blur_p[1], solarize_p[1])
        super().__init__({"views": [first, second]}, device_photometric=device_photometric)
        self.view1, self.view2 = self.pil(first), self.pil(second)


@register_method
class BYOL(PretrainMethod):
    """BYOL on a timm CNN (ResNet-50 in Gröger et al.). Target parameters live under `target_*`, have
    requires_grad False, and change only in `after_optimizer_step`: t <- m t + (1 - m) o, with m = ctx.momentum
    (the engine's cosine from `momentum_teacher` to 1, as in Grill et al. eq. 1)."""

    name = "byol"
    uses_ema = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            {
                "backbone": "resnet50.tv_in1k",
                "init": "imagenet",
                "optimizer": "adam",
                "batch_size": 150,
                "lr": 3e-3,
                "lr_scaling": "linear256",
                "lr_schedule": "cosine",
                "weight_decay": 1.5e-6,
                "momentum_teacher": 0.996,
                "proj_hidden_dim": 4096,
                "proj_out_dim": 256,
                "pred_hidden_dim": 4096,
                "crop_scale_min": 0.08,
                "jitter_brightness": 0.4,
                "jitter_contrast": 0.4,
                "jitter_saturation": 0.2,
                "jitter_hue": 0.1,
                "p_jitter": 0.8,
                "p_gray": 0.2,
                "blur_p1": 1.0,
                "blur_p2": 0.1,
                "solarize_p1": 0.0,
                "solarize_p2": 0.2,
                "hflip_p": 0.5,
            }
        )
        return cfg

    _grill_views = "Grill et al. 2020 Table 6 (the authors' view options are in an unshipped config)"
    default_sources = {
        "backbone": "Gröger et al. Table 1 (ResNet-50); .tv_in1k = the torchvision ImageNet weights of the authors' code",
        "init": "authors' code models/byol/model.py: torchvision resnet50(pretrained=True)",
        "optimizer": "Gröger et al. Table 1 (Adam)",
        "batch_size": "Gröger et al. Table 1 (150)",
        "lr": "Gröger et al. Table 1 (3e-3)",
        "lr_scaling": "authors' code trainers/byol_trainer.py: cosine_scheduler(lr * batch / 256)",
        "lr_schedule": "Gröger et al. Table 1 (cosine)",
        "weight_decay": "Grill et al. 2020 sec. 3.3 (1.5e-6; the authors' value is in an unshipped config)",
        "momentum_teacher": "Grill et al. 2020 sec. 3.2: tau_base 0.996, cosine to 1 (authors' code: same schedule)",
        "proj_hidden_dim": "Grill et al. 2020 sec. 3.3 / authors' code models/byol/model.py (4096)",
        "proj_out_dim": "Grill et al. 2020 sec. 3.3 / authors' code models/byol/model.py (256)",
        "pred_hidden_dim": "Grill et al. 2020 sec. 3.3 (predictor = projector's shape)",
        "crop_scale_min": _grill_views,
        "jitter_brightness": _grill_views,
        "jitter_contrast": _grill_views,
        "jitter_saturation": _grill_views,
        "jitter_hue": _grill_views,
        "p_jitter": _grill_views,
        "p_gray": _grill_views,
        "blur_p1": "Grill et al. 2020 Table 6 / authors' code augmentations/simclr.py (view 1: always)",
        "blur_p2": "Grill et al. 2020 Table 6 / authors' code augmentations/simclr.py (view 2: 0.1)",
        "solarize_p1": "Grill et al. 2020 Table 6 / authors' code augmentations/simclr.py (view 1: never)",
        "solarize_p2": "Grill et al. 2020 Table 6 / authors' code augmentations/simclr.py (view 2: 0.2)",
        "hflip_p": _grill_views,
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.backbone = create_backbone(cfg["backbone"], cfg["init"], model_kwargs=cfg["backbone_kwargs"])
        in_dim = int(self.backbone.num_features)
        out_dim = int(cfg["proj_out_dim"])
        self.projector = BYOLMLP(in_dim, int(cfg["proj_hidden_dim"]), out_dim)
        self.predictor = BYOLMLP(out_dim, int(cfg["pred_hidden_dim"]), out_dim)
        # Target starts as an exact copy of the online encoder + projector (Grill et al. Algorithm 1).
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self._target_params():
            p.requires_grad_(False)
        self.criterion = BYOLLoss()
        resolve_gpu_augment(cfg.get("gpu_augment", "auto"), "cpu")

    def _target_params(self) -> list[nn.Parameter]:
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    def _online_params(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("target_backbone.", "target_projector.")

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        c = self.cfg
        return BYOLTransform(
            int(c["image_size"]),
            float(c["crop_scale_min"]),
            (
                float(c["jitter_brightness"]),
                float(c["jitter_contrast"]),
                float(c["jitter_saturation"]),
                float(c["jitter_hue"]),
            ),
            float(c["p_jitter"]),
            float(c["p_gray"]),
            (float(c["blur_p1"]), float(c["blur_p2"])),
            (float(c["solarize_p1"]), float(c["solarize_p2"])),
            float(c["hflip_p"]),
            photometric_on_device(self, c),
        )

    def device_augment(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Colour jitter, grayscale, blur, solarisation and normalisation of uint8 views, batched."""
        return augment_batch(batch, IMAGENET_MEAN, IMAGENET_STD)

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.device_augment(batch, ctx)  # no-op when the engine already did it
        v1, v2 = batch["views"]
        n = v1.shape[0]
        x = torch.cat([v1, v2], dim=0)
        z_online = self.projector(self.backbone(x).flatten(1))
        p = self.predictor(z_online)
        with torch.no_grad():
            z_target = self.target_projector(self.target_backbone(x).flatten(1))
        p1, p2 = p[:n].float(), p[n:].float()
        t1, t2 = z_target[:n].float(), z_target[n:].float()
        loss = self.criterion(p1, p2, t1, t2)
        return loss, {"feature_std": float(l2_normalized_std(z_online))}

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        if not ctx.training:
            return
        m = float(ctx.momentum)
        for t, o in zip(self._target_params(), self._online_params(), strict=True):
            t.mul_(m).add_(o.detach(), alpha=1.0 - m)

    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        return std_collapse_reason(epoch_logs, int(self.cfg["proj_out_dim"]))

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        return self.backbone, rgb_backbone_meta(self.cfg, self.name, self.backbone)
