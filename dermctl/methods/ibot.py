"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al. 2022, ICLR), following the official
code (bytedance/ibot) for every default.

DINO's self-distillation on the class token plus masked image modelling: the student sees the global crops
with block-wise masked patches (masked patch embeddings replaced by a learnable mask token) and must predict,
for each masked patch, the teacher's distribution over patch prototypes computed on the unmasked crop. Local
crops only feed the class-token term. In Gröger et al. (2023) iBOT trains a ViT-tiny/16 with AdamW, batch 56,
lr 5e-4 and a cosine schedule (Table 1) and gives the best frozen features of the study.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dermctl.errors import UsageError
from dermctl.methods.base import StepContext, register_method
from dermctl.methods.dino import (
    DINO,
    DINOHead,
    as_loss_float,
    cat_views,
    check_config,
    check_export,
    collapse_from_logs,
    distribution_health,
    ema_center,
    exported_vit,
    feature_dim_of,
    schedule_at_epoch,
    teacher_temp_schedule,
    weight_normed_linear,
)
from dermctl.methods.masking import BlockMaskGenerator
from dermctl.methods.multicrop import MultiCrop
from dermctl.methods.photometric import photometric_on_device, resolve_gpu_augment
from dermctl.models.backbone import BackboneMeta, create_backbone, is_vit

# -- backbone with a mask token -----------------------------------------------------------------------


class MaskedViT(nn.Module):
    """A timm ViT whose masked patch embeddings are replaced by a learnable token (iBOT Sec. 3.2).

    forward(x, mask) embeds the patches, puts `mask_token` where mask (B, h, w) is True, adds the
    (interpolated, so any crop size works) position embeddings and runs the blocks and the final norm.
    Returns the class token and the patch tokens, (B, 1 + h*w, D); register tokens are dropped.
    The mask token starts at zero (official `masked_embed`). `vit` is the plain timm model (exported).

    Example:
        >>> net = MaskedViT(timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True))
        >>> tokens = net(images, mask)          # images (B, 3, 224, 224), mask (B, 14, 14) bool
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        if not is_vit(vit):
            raise UsageError(f"--backbone: iBOT needs a ViT with a class token, got {type(vit).__name__}")
        self.vit = vit
        self.mask_token = nn.Parameter(torch.zeros(1, vit.embed_dim))

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        tokens = vit.patch_embed(x)  # (B, h, w, D) with dynamic_img_size, else (B, h*w, D)
        if mask is not None:
            m = mask.bool().reshape(tokens.shape[:-1])
            tokens = torch.where(m.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = vit._pos_embed(tokens)
        tokens = vit.patch_drop(tokens)
        tokens = vit.norm_pre(tokens)
        tokens = vit.blocks(tokens)
        tokens = vit.norm(tokens)
        n_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        return torch.cat([tokens[:, :1], tokens[:, n_prefix:]], dim=1)


# -- head ---------------------------------------------------------------------------------------------


class iBOTHead(DINOHead):  # noqa: N801  (the paper's name)
    """DINO head applied to every token (iBOT Sec. 3.3): the MLP is shared by class and patch tokens; the
    last layer too when `shared_head` (the paper's choice), else patch tokens get their own weight-normalised
    layer to `patch_out_dim`. On (B, T, D) tokens returns (class logits (B, K), patch logits (B, T-1, K'));
    on (B, D) features returns class logits. Layer for layer the official `iBOTHead` (bytedance/ibot
    models/head.py, also the study authors' models/ibot/head.py): the DINOHead MLP on every token, the class
    token through `last_layer`, patch tokens through `last_layer2` (the same module when `shared_head`).

    Example:
        >>> head = iBOTHead(192, 8192)
        >>> cls_logits, patch_logits = head(torch.randn(2, 1 + 196, 192))
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        patch_out_dim: int | None = None,
        shared_head: bool = True,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__(in_dim, out_dim, use_bn, norm_last_layer, nlayers, hidden_dim, bottleneck_dim)
        if shared_head:
            self.last_layer2 = self.last_layer
        else:
            self.last_layer2 = weight_normed_linear(bottleneck_dim, patch_out_dim or out_dim, norm_last_layer)

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        if x.ndim == 2:
            return super().forward(x)
        b, t, d = x.shape
        z = self.mlp(x.reshape(b * t, d)).reshape(b, t, -1)  # flattened so BatchNorm1d would also work
        z = F.normalize(z, dim=-1, p=2)
        return self.last_layer(z[:, 0]), self.last_layer2(z[:, 1:])


class iBOTNet(nn.Module):  # noqa: N801
    """MaskedViT + iBOTHead: global crops (with masks) -> (class logits, patch logits); crops without
    masks -> class logits only when `cls_only`."""

    def __init__(self, backbone: MaskedViT, head: iBOTHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None) -> Any:
        x = torch.cat(list(crops))
        m = torch.cat(list(masks)) if masks is not None else None
        return self.head(self.backbone(x, m))

    def forward_cls(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Class logits of crops, one backbone pass per run of equal-size crops."""
        out, start = [], 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
                out.append(self.backbone(torch.cat(list(crops[start:end])))[:, 0])
                start = end
        return self.head(torch.cat(out))


# -- loss ---------------------------------------------------------------------------------------------


class iBOTLoss(nn.Module):  # noqa: N801
    """iBOT's loss (Zhou et al. 2022, Eq. 2-3; official `iBOTLoss`) = lambda1 * L_cls + lambda2 * L_mim.

    L_cls: DINO's loss on class logits over (teacher global view q, student view v != q) pairs, centre
    `center`. L_mim: for each global crop q, CE(softmax((t_patch_q - center2) / teacher_patch_temp),
    log_softmax(s_patch_q / student_temp)) summed over the masked patches of each image and divided by its
    number of masked patches (at least 1, so an unmasked image adds 0), then averaged over the images and
    over the global crops. Both centres are EMAs (momentum 0.9) of the teacher's batch means; the patch
    centre averages over patches first. Shapes (view-major, n_global global crops of B images):
        student_cls (n_crops * B, K), student_patch (n_global * B, N, K'), teacher_cls (n_global * B, K),
        teacher_patch (n_global * B, N, K'), masks: n_global tensors (B, h, w) or (B, N), or one tensor
        (n_global * B, ...) bool, True = masked.
    Returns the total; `last_terms` holds the detached cls and patch terms for logging.

    Example:
        >>> loss_fn = iBOTLoss(out_dim=8192, patch_out_dim=8192)
        >>> loss = loss_fn(s_cls, s_patch, t_cls, t_patch, masks, teacher_temp=0.04, teacher_patch_temp=0.07)
    """

    center: torch.Tensor
    center2: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        *,
        n_global: int = 2,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        teacher_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
    ) -> None:
        super().__init__()
        self.n_global, self.student_temp = n_global, student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.teacher_temp, self.teacher_patch_temp = teacher_temp, teacher_patch_temp
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.last_terms: dict[str, float] = {}

    def teacher_probs(self, teacher_cls: torch.Tensor, teacher_temp: float | None = None) -> torch.Tensor:
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        return F.softmax((as_loss_float(teacher_cls.detach()) - self.center) / temp, dim=-1)

    def forward(
        self,
        student_cls: torch.Tensor | Sequence[torch.Tensor],
        student_patch: torch.Tensor,
        teacher_cls: torch.Tensor,
        teacher_patch: torch.Tensor,
        masks: torch.Tensor | Sequence[torch.Tensor],
        teacher_temp: float | None = None,
        teacher_patch_temp: float | None = None,
        update_center: bool = True,
    ) -> torch.Tensor:
        s_cls = as_loss_float(cat_views(student_cls)) / self.student_temp
        s_patch = as_loss_float(student_patch) / self.student_temp
        t_cls, t_patch = as_loss_float(teacher_cls.detach()), as_loss_float(teacher_patch.detach())
        batch = t_cls.shape[0] // self.n_global
        ptemp = self.teacher_patch_temp if teacher_patch_temp is None else teacher_patch_temp
        q_cls = self.teacher_probs(t_cls, teacher_temp).split(batch)
        q_patch = F.softmax((t_patch - self.center2) / ptemp, dim=-1).split(batch)
        s_cls_v, s_patch_v = s_cls.split(batch), s_patch.split(batch)
        mask_v = self._masks(masks, batch)
        cls_total, n_cls, patch_total, n_patch = s_cls.new_zeros(()), 0, s_cls.new_zeros(()), 0
        for q in range(len(q_cls)):
            for v in range(len(s_cls_v)):
                if v == q:  # same crop: masked patch prediction
                    ce = torch.sum(-q_patch[q] * F.log_softmax(s_patch_v[v], dim=-1), dim=-1)  # (B, N)
                    m = mask_v[v].float()
                    per_image = (ce * m).sum(-1) / m.sum(-1).clamp(min=1.0)
                    patch_total = patch_total + per_image.mean()
                    n_patch += 1
                else:
                    cls_total = (
                        cls_total + torch.sum(-q_cls[q] * F.log_softmax(s_cls_v[v], dim=-1), dim=-1).mean()
                    )
                    n_cls += 1
        cls_loss = cls_total / max(n_cls, 1) * self.lambda1
        patch_loss = patch_total / max(n_patch, 1) * self.lambda2
        self.last_terms = {"cls_loss": float(cls_loss.detach()), "patch_loss": float(patch_loss.detach())}
        if update_center:
            self.update_center(t_cls, t_patch)
        return cls_loss + patch_loss

    def _masks(self, masks: torch.Tensor | Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
        views = list(masks.split(batch)) if isinstance(masks, torch.Tensor) else list(masks)
        if len(views) != self.n_global:
            raise ValueError(f"iBOTLoss: {len(views)} masks given for {self.n_global} global crops")
        return [m.reshape(m.shape[0], -1) for m in views]

    @torch.no_grad()
    def update_center(self, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor) -> None:
        """EMA of the teacher's batch means: class logits, and patch logits averaged over patches first."""
        t_cls, t_patch = as_loss_float(teacher_cls.detach()), as_loss_float(teacher_patch.detach())
        self.center.copy_(
            ema_center(self.center, t_cls.sum(0, keepdim=True), t_cls.shape[0], self.center_momentum)
        )
        patch_sum = t_patch.mean(1).sum(0, keepdim=True).unsqueeze(0)  # (1, 1, K')
        self.center2.copy_(ema_center(self.center2, patch_sum, t_patch.shape[0], self.center_momentum2))


def patch_temp_schedule(
    warmup_temp: float, temp: float, warmup_epochs: int, epochs: int, start_epoch: int = 0
) -> np.ndarray:
    """Per-epoch teacher patch temperature (official iBOT): `warmup_temp` until `start_epoch` (when masked
    prediction starts), then linear to `temp` over `warmup_epochs`, then `temp`."""
    warm = teacher_temp_schedule(warmup_temp, temp, warmup_epochs, max(epochs - start_epoch, 0))
    return np.concatenate([np.full(min(start_epoch, epochs), warmup_temp), warm])[:epochs]


# -- views with masks -----------------------------------------------------------------------------------


class MaskedMultiCrop:
    """MultiCrop views plus one iBOT mask (h, w) bool per global crop, h = w = crop size // patch size
    (key "masks"). Masks come from `BlockMaskGenerator`, seeded by Python's global RNG."""

    def __init__(self, views: MultiCrop, masks: BlockMaskGenerator, patch_size: int) -> None:
        self.views, self.masks, self.patch_size = views, masks, patch_size

    def __call__(self, img: Image.Image) -> dict[str, list[torch.Tensor]]:
        out = self.views(img)
        grid = [(g.shape[-2] // self.patch_size, g.shape[-1] // self.patch_size) for g in out["globals"]]
        out["masks"] = [torch.from_numpy(self.masks(h, w)) for h, w in grid]
        return out

    def __repr__(self) -> str:
        return f"MaskedMultiCrop({self.views!r}, {self.masks!r}, patch {self.patch_size})"


# -- the method ---------------------------------------------------------------------------------------


@register_method
class iBOT(DINO):  # noqa: N801
    """iBOT (Zhou et al. 2022) with the official recipe; config keys in `defaults()`.

    Shrink for tests purely through config, e.g. image_size 32 (or 64 for 4x4 patch grids),
    local_crop_size 16, local_crops_number 2, out_dim 64, patch_out_dim 64, hidden_dim 32,
    bottleneck_dim 16, warmup_teacher_temp_epochs 0.
    """

    name = "ibot"
    uses_ema = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = DINO.defaults()  # engine keys and DINO's (same optimiser recipe in the official iBOT code)
        cfg.update(
            out_dim=8192,  # official iBOT default and ViT-S/B runs
            patch_out_dim=8192,  # official; ignored when shared_head (then = out_dim)
            shared_head=True,  # paper's main recipe / official ViT-S run (--shared_head true)
            norm_last_layer=True,  # official default (its ViT-S run used false: less stable)
            teacher_temp=0.04,  # official default (its ViT-S run used 0.07)
            warmup_teacher_patch_temp=0.04,  # official
            teacher_patch_temp=0.07,  # official
            center_momentum2=0.9,  # official patch-centre momentum
            lambda1=1.0,  # official weight of the class-token term
            lambda2=1.0,  # official weight of the masked-patch term
            global_crops_number=2,  # official
            global_crops_scale=[0.14, 1.0],  # official default global scale
            local_crops_number=10,  # official ViT runs (--local_crops_number 10)
            local_crops_scale=[0.05, 0.4],  # official default (main_ibot.py --local_crops_scale)
            pred_shape="block",  # official: BEiT block-wise masks
            pred_ratio=0.3,  # official ViT-S run: --pred_ratio 0 0.3 --pred_ratio_var 0 0.2
            pred_ratio_var=0.2,  # i.e. ratio ~ U[0.1, 0.5] ...
            mask_prob=0.5,  # ... for half of the crops; the other half unmasked
            pred_aspect_ratio=[0.3, 1 / 0.3],  # official
            pred_start_epoch=0,  # official ViT runs
        )
        return cfg

    default_sources = {
        **DINO.default_sources,
        "out_dim": "official main_ibot.py (8192)",
        "patch_out_dim": "official main_ibot.py (8192; = out_dim when shared_head)",
        "shared_head": "Zhou et al. 2022 main recipe / official ViT-S run (--shared_head true)",
        "norm_last_layer": "official main_ibot.py default (true)",
        "teacher_temp": "official main_ibot.py default (0.04)",
        "warmup_teacher_patch_temp": "official main_ibot.py (0.04)",
        "teacher_patch_temp": "official main_ibot.py (0.07)",
        "center_momentum2": "official iBOTLoss (patch centre 0.9)",
        "lambda1": "Zhou et al. 2022 / official main_ibot.py (1.0)",
        "lambda2": "Zhou et al. 2022 / official main_ibot.py (1.0)",
        "global_crops_number": "official main_ibot.py (2)",
        "global_crops_scale": "official main_ibot.py (0.14, 1)",
        "local_crops_number": "official iBOT ViT runs (--local_crops_number 10)",
        "local_crops_scale": "official main_ibot.py (0.05, 0.4)",
        "pred_shape": "Zhou et al. 2022 / official main_ibot.py (BEiT block-wise masks)",
        "pred_ratio": "official ViT-S run (--pred_ratio 0 0.3 --pred_ratio_var 0 0.2: ratio ~ U[0.1, 0.5])",
        "pred_ratio_var": "official ViT-S run (--pred_ratio_var 0 0.2)",
        "mask_prob": "official main_ibot.py (0.5: half of the crops unmasked)",
        "pred_aspect_ratio": "official main_ibot.py (0.3, 1/0.3)",
        "pred_start_epoch": "official ViT runs (0)",
        "export": "official iBOT evaluation uses the teacher (--checkpoint_key teacher)",
        "export_epoch": "authors' code trainers/ibot_trainer.py (model_best.pth is rewritten at every save: the "
        "last epoch) / official iBOT evaluates the final checkpoint",
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)  # DINO's construction with iBOT's check, networks and loss
        self.mask_gen = BlockMaskGenerator(
            cfg["pred_ratio"],
            cfg["pred_ratio_var"],
            cfg["mask_prob"],
            cfg["pred_aspect_ratio"],
            cfg["pred_shape"],
        )
        self._patch_temps: np.ndarray | None = None

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> None:
        check_config(
            cfg,
            ints=(
                "out_dim",
                "patch_out_dim",
                "hidden_dim",
                "bottleneck_dim",
                "head_nlayers",
                "warmup_teacher_temp_epochs",
                "freeze_last_layer",
                "pred_start_epoch",
                "global_crops_number",
            ),
            positives=(
                "out_dim",
                "patch_out_dim",
                "bottleneck_dim",
                "student_temp",
                "warmup_teacher_temp",
                "teacher_temp",
                "warmup_teacher_patch_temp",
                "teacher_patch_temp",
                "global_crops_number",
            ),
            unit=("center_momentum", "center_momentum2", "drop_path_rate", "mask_prob"),
        )
        check_export(cfg)
        MultiCrop.from_config(cfg)
        resolve_gpu_augment(cfg.get("gpu_augment", "auto"), "cpu")
        BlockMaskGenerator(
            cfg["pred_ratio"],
            cfg["pred_ratio_var"],
            cfg["mask_prob"],
            cfg["pred_aspect_ratio"],
            cfg["pred_shape"],
        )

    @classmethod
    def build_net(cls, cfg: dict[str, Any], init: str, drop_path: float, norm_last_layer: bool) -> nn.Module:
        backbone = MaskedViT(
            create_backbone(
                cfg["backbone"], init, drop_path_rate=drop_path, model_kwargs=cfg["backbone_kwargs"]
            )
        )
        head = iBOTHead(
            feature_dim_of(backbone.vit),
            cfg["out_dim"],
            cfg["patch_out_dim"],
            shared_head=cfg["shared_head"],
            use_bn=cfg["use_bn_in_head"],
            norm_last_layer=norm_last_layer,
            nlayers=cfg["head_nlayers"],
            hidden_dim=cfg["hidden_dim"],
            bottleneck_dim=cfg["bottleneck_dim"],
        )
        return iBOTNet(backbone, head)

    @classmethod
    def build_loss(cls, cfg: dict[str, Any]) -> nn.Module:
        return iBOTLoss(
            cfg["out_dim"],
            cfg["out_dim"] if cfg["shared_head"] else cfg["patch_out_dim"],
            n_global=cfg["global_crops_number"],
            student_temp=cfg["student_temp"],
            center_momentum=cfg["center_momentum"],
            center_momentum2=cfg["center_momentum2"],
            lambda1=cfg["lambda1"],
            lambda2=cfg["lambda2"],
            teacher_temp=cfg["teacher_temp"],
            teacher_patch_temp=cfg["teacher_patch_temp"],
        )

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        views = self.views.on_device(photometric_on_device(self, self.cfg))
        return MaskedMultiCrop(views, self.mask_gen, self.student.backbone.patch_size)

    def epoch_patch_temps(self, epochs: int) -> np.ndarray:
        c = self.cfg
        return patch_temp_schedule(
            c["warmup_teacher_patch_temp"],
            c["teacher_patch_temp"],
            c["warmup_teacher_temp_epochs"],
            epochs,
            c["pred_start_epoch"],
        )

    def schedules(self, epochs: int, iters_per_epoch: int) -> dict[str, np.ndarray]:
        """teacher_temp and teacher_patch_temp per iteration (official per-epoch values, repeated)."""
        out = super().schedules(epochs, iters_per_epoch)
        self._patch_temps = self.epoch_patch_temps(epochs)
        return {**out, "teacher_patch_temp": np.repeat(self._patch_temps, iters_per_epoch)}

    def patch_temp_at(self, ctx: StepContext) -> float:
        return schedule_at_epoch(self._patch_temps, self.epoch_patch_temps, ctx.epoch)

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.device_augment(batch, ctx)  # no-op when the engine already did it
        globals_ = list(batch["globals"])
        locals_ = list(batch.get("locals", []))
        masks = [m.bool() for m in batch["masks"]]
        if ctx.epoch < self.cfg["pred_start_epoch"]:  # official: ratio 0 before masked prediction starts
            masks = [torch.zeros_like(m) for m in masks]
        temp, ptemp = self.teacher_temp_at(ctx), self.patch_temp_at(ctx)
        with torch.no_grad():
            t_cls, t_patch = self.teacher(globals_)
            health = distribution_health(self.loss.teacher_probs(t_cls, temp))
        s_cls, s_patch = self.student(globals_, masks)
        if locals_:
            s_cls = torch.cat([s_cls, self.student.forward_cls(locals_)])
        loss = self.loss(s_cls, s_patch, t_cls, t_patch, masks, temp, ptemp, update_center=ctx.training)
        terms = self.loss.last_terms
        logs = {
            **terms,
            **health,
            "kl_teacher_student": terms["cls_loss"] / max(self.cfg["lambda1"], 1e-12)
            - health["teacher_entropy"],
            "mask_ratio": float(torch.stack([m.float().mean() for m in masks]).mean()),
        }
        return loss, logs

    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        return collapse_from_logs(epoch_logs, self.cfg["out_dim"])

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        """The teacher's ViT (config `export`, default "teacher", as the official evaluation) or the student's."""
        net = self.teacher if self.cfg["export"] == "teacher" else self.student
        return exported_vit(self.cfg, self.name, net.backbone.vit)
