"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers"), following the official code (facebookresearch/dino) for every default.

A student and a teacher of the same architecture (backbone + `DINOHead`) see multi-crop views of an image;
the teacher (an EMA of the student, never trained by gradients) sees the global crops only. `DINOLoss` is
the cross-entropy between the centred, sharpened teacher distribution and the student distribution over
every (teacher view, student view) pair of different views. In Gröger et al. (2023) DINO trains a ViT-tiny/16
with AdamW, batch 56, lr 5e-4 and a cosine schedule (Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dermctl.errors import UsageError
from dermctl.methods.base import ENGINE_DEFAULTS, PretrainMethod, StepContext, register_method
from dermctl.methods.multicrop import MultiCrop
from dermctl.methods.photometric import augment_batch, photometric_on_device, resolve_gpu_augment
from dermctl.models.backbone import BackboneMeta, create_backbone, default_feature_rule

# -- head ---------------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """DINO projection head (Caron et al. 2021, Sec. 3.1 and App.): MLP in -> hidden -> ... -> bottleneck
    (GELU, optional BatchNorm), L2 normalisation, then a weight-normalised linear layer without bias to
    `out_dim` prototypes. With `norm_last_layer` the weight norm g is fixed to 1 (not trained).

    Layer for layer the official `DINOHead` (facebookresearch/dino vision_transformer.py; the study authors'
    models/dino/head.py is the same): Linear(in, 2048) [BN] GELU, Linear(2048, 2048) [BN] GELU,
    Linear(2048, 256), trunc-normal(0.02) weights and zero biases on the MLP only, then
    weight_norm(Linear(256, K, bias=False)) with g filled with 1.

    Example:
        >>> head = DINOHead(192, 65536)         # ViT-tiny features -> 65536 logits
        >>> logits = head(torch.randn(8, 192))  # (8, 65536)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
                layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if use_bn else []
            layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.mlp.apply(_init_linear)
        self.last_layer = weight_normed_linear(bottleneck_dim, out_dim, norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def _init_linear(m: nn.Module) -> None:
    # official init: truncated normal std 0.02, zero bias
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def weight_normed_linear(in_dim: int, out_dim: int, norm_last_layer: bool) -> nn.Module:
    """Weight-normalised linear layer without bias, g initialised to 1 and frozen when `norm_last_layer`."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    g = layer.parametrizations.weight.original0  # the norm g, one per output (out_dim, 1)
    with torch.no_grad():
        g.fill_(1.0)
    g.requires_grad = not norm_last_layer
    return layer


# -- loss ---------------------------------------------------------------------------------------------


def cat_views(x: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """A list of per-view (B, ...) tensors -> one view-major (n_views * B, ...) tensor (tensors pass)."""
    return x if isinstance(x, torch.Tensor) else torch.cat(list(x))


def as_loss_float(x: torch.Tensor) -> torch.Tensor:
    """float32 for half/bfloat16 logits (losses are computed in float32 under autocast); float64 stays."""
    return x if x.dtype == torch.float64 else x.float()


class DINOLoss(nn.Module):
    """DINO's loss (Caron et al. 2021, Eq. 1 and Alg. 1; official `DINOLoss`).

    student_output: (n_crops * B, K) logits, view-major (global views first, then local views), or a list
    of per-view (B, K) tensors. teacher_output: (n_global * B, K) logits of the global views, same layout.
    For every teacher view iq and student view v != iq: CE(softmax((t_iq - c) / teacher_temp),
    log_softmax(s_v / student_temp)), averaged over the batch; the loss is the mean over those pairs.
    The centre c (buffer `center`, shape (1, K)) is then updated as c <- m c + (1 - m) mean(t) over the
    batch (all processes when distributed) unless `update_center=False` (validation).

    Example:
        >>> loss_fn = DINOLoss(out_dim=3)
        >>> loss = loss_fn(student_logits, teacher_logits, teacher_temp=0.04)   # (3B, 3), (2B, 3)
    """

    center: torch.Tensor

    def __init__(
        self,
        out_dim: int,
        *,
        n_global: int = 2,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        teacher_temp: float = 0.04,
    ) -> None:
        super().__init__()
        self.n_global, self.student_temp = n_global, student_temp
        self.center_momentum, self.teacher_temp = center_momentum, teacher_temp
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, teacher_output: torch.Tensor, teacher_temp: float | None = None) -> torch.Tensor:
        """softmax((t - center) / teacher_temp), in float32, without gradient."""
        temp = self.teacher_temp if teacher_temp is None else teacher_temp
        return F.softmax((as_loss_float(cat_views(teacher_output).detach()) - self.center) / temp, dim=-1)

    def forward(
        self,
        student_output: torch.Tensor | Sequence[torch.Tensor],
        teacher_output: torch.Tensor | Sequence[torch.Tensor],
        teacher_temp: float | None = None,
        update_center: bool = True,
    ) -> torch.Tensor:
        student = as_loss_float(cat_views(student_output))
        teacher = as_loss_float(cat_views(teacher_output))
        if teacher.shape[0] % self.n_global or student.shape[0] % max(teacher.shape[0] // self.n_global, 1):
            raise ValueError(
                f"DINOLoss: teacher rows ({teacher.shape[0]}) must be n_global ({self.n_global}) x batch and "
                f"student rows ({student.shape[0]}) a multiple of that batch (views stacked view-major)"
            )
        batch = teacher.shape[0] // self.n_global
        student_views = (student / self.student_temp).split(batch)
        teacher_views = self.teacher_probs(teacher, teacher_temp).split(batch)
        total, n_terms = student.new_zeros(()), 0
        for iq, q in enumerate(teacher_views):
            for v, s in enumerate(student_views):
                if v == iq:  # never compare a view with itself
                    continue
                total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                n_terms += 1
        loss = total / max(n_terms, 1)
        if update_center:
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the batch mean of the teacher logits (mean over every process's batch)."""
        teacher = teacher_output.detach().float()
        self.center.copy_(
            ema_center(self.center, teacher.sum(dim=0, keepdim=True), teacher.shape[0], self.center_momentum)
        )


def ema_center(center: torch.Tensor, batch_sum: torch.Tensor, count: int, momentum: float) -> torch.Tensor:
    """center * m + mean * (1 - m), where mean = batch_sum / count, both all-reduced when distributed."""
    if dist.is_available() and dist.is_initialized():
        batch_sum = batch_sum.clone()
        dist.all_reduce(batch_sum)
        count = count * dist.get_world_size()
    return center * momentum + (batch_sum / count) * (1 - momentum)


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature (official DINO): linear from `warmup_temp` to `temp` over
    `warmup_epochs` epochs (np.linspace, so epoch warmup_epochs - 1 already has `temp`), then `temp`.
    Runs shorter than the warm-up take the first `epochs` values of the full schedule."""
    warm = np.linspace(warmup_temp, temp, warmup_epochs)
    return np.concatenate([warm, np.full(max(epochs - warmup_epochs, 0), temp)])[:epochs]


def distribution_health(probs: torch.Tensor) -> dict[str, float]:
    """Collapse indicators of the teacher distribution (Caron et al. 2021, Sec. 5.3 / Fig. 7):
    `teacher_entropy` = mean per-sample entropy (log K: uniform collapse), `kl_uniform` = KL(mean p || U)
    = log K - H(mean p) (log K: every sample on the same prototype), in nats."""
    probs = probs.detach().float().flatten(0, -2)
    k = probs.shape[-1]
    entropy = torch.special.entr(probs).sum(-1).mean()
    mean_entropy = torch.special.entr(probs.mean(0)).sum()
    return {"teacher_entropy": float(entropy), "kl_uniform": float(math.log(k) - mean_entropy)}


def collapse_from_logs(
    logs: dict[str, float], out_dim: int, kl_key: str = "kl_teacher_student"
) -> str | None:
    """A reason when the student matches the teacher exactly (KL ~ 0) and the teacher is uniform or
    one-hot: the two collapse modes of DINO (Caron et al. 2021, Sec. 5.3)."""
    if kl_key not in logs or "teacher_entropy" not in logs:
        return None
    log_k = math.log(out_dim)
    if logs[kl_key] > 1e-3:
        return None
    ent = logs["teacher_entropy"]
    if ent > 0.95 * log_k:
        return f"collapse: teacher output is uniform (entropy {ent:.3f} ~ log K {log_k:.3f}) and the student copies it"
    if logs.get("kl_uniform", 0.0) > 0.95 * log_k:
        return (
            f"collapse: one prototype dominates every image (KL to uniform {logs['kl_uniform']:.3f} ~ log K)"
        )
    return None


# -- student / teacher plumbing -------------------------------------------------------------------------


class MultiCropNet(nn.Module):
    """Backbone + head over a list of crop batches (official `MultiCropWrapper`): consecutive crops of one
    resolution go through the backbone together; the head sees every crop; output is view-major."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        feats, start = [], 0
        for end in range(1, len(crops) + 1):
            if end == len(crops) or crops[end].shape[-2:] != crops[start].shape[-2:]:
                feats.append(self.backbone(torch.cat(list(crops[start:end]))))
                start = end
        return self.head(torch.cat(feats))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """t <- m t + (1 - m) s for every parameter the two share by name (official DINO / iBOT)."""
    student_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        s = student_params.get(name)
        if s is not None:
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def cancel_last_layer_grads(model: nn.Module) -> None:
    """Drop the gradients of the head's last layer (official `cancel_gradients_last_layer`)."""
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def schedule_at_epoch(cached: np.ndarray | None, compute: Callable[[int], np.ndarray], epoch: int) -> float:
    """A per-epoch schedule's value; past its end (or before `schedules()` was called) from `compute`."""
    if cached is not None and 0 <= epoch < len(cached):
        return float(cached[epoch])
    values = compute(max(epoch + 1, 1))
    return float(values[min(max(epoch, 0), len(values) - 1)])


def feature_dim_of(backbone: nn.Module) -> int:
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


def check_config(
    cfg: dict[str, Any], ints: Sequence[str], positives: Sequence[str], unit: Sequence[str]
) -> None:
    """Up-front config validation; errors name the key and the value."""
    for key in ints:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UsageError(f"config {key}: {v!r} is not a non-negative integer")
    for key in positives:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise UsageError(f"config {key}: {v!r} is not a positive number")
    for key in unit:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
            raise UsageError(f"config {key}: {v!r} is not a number in [0, 1]")


def exported_vit(cfg: dict[str, Any], method: str, backbone: nn.Module) -> tuple[nn.Module, BackboneMeta]:
    """A ViT backbone of DINO / iBOT and its export description (which network: `extra.export`)."""
    meta = BackboneMeta(
        timm_name=cfg["backbone"],
        feature_rule=default_feature_rule(backbone),
        input_size=cfg["image_size"],
        model_kwargs=dict(cfg["backbone_kwargs"]),
        extra={"method": method, "export": cfg["export"]},
    )
    return backbone, meta


EXPORTS = ("teacher", "student")


def check_export(cfg: dict[str, Any]) -> None:
    if cfg.get("export") not in EXPORTS:
        raise UsageError(f"config export: {cfg.get('export')!r} is not one of {', '.join(EXPORTS)}")


# -- the method ---------------------------------------------------------------------------------------


@register_method
class DINO(PretrainMethod):
    """DINO (Caron et al. 2021) with the official recipe; config keys in `defaults()`.

    Shrink for tests purely through config, e.g. backbone vit_tiny_patch16_224, image_size 32,
    local_crop_size 16, local_crops_number 2, out_dim 64, hidden_dim 32, bottleneck_dim 16,
    warmup_teacher_temp_epochs 0.
    """

    name = "dino"
    uses_ema = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            backbone="vit_tiny_patch16_224",  # Gröger et al. Table 1: ViT-tiny/16
            batch_size=56,  # Table 1
            optimizer="adamw",  # Table 1 and official default
            lr=5e-4,  # Table 1 / official, for a global batch of 256 ...
            lr_scaling="linear256",  # ... scaled by batch/256 (official linear scaling rule)
            lr_schedule="cosine",  # Table 1 / official cosine to min_lr
            min_lr=1e-6,  # official
            warmup_epochs=10,  # official lr warm-up
            weight_decay=0.04,  # official, cosine to weight_decay_end
            weight_decay_end=0.4,  # official
            clip_grad=3.0,  # official
            clip_mode="per_param",  # official utils.clip_gradients: each parameter's gradient on its own
            momentum_teacher=0.996,  # official, cosine to 1 (engine)
            image_size=224,  # global crop size (official 224)
        )
        cfg.update(
            out_dim=65536,  # K prototypes (paper); 4096-8192 suits small data sets
            hidden_dim=2048,  # official DINOHead
            bottleneck_dim=256,  # official DINOHead
            head_nlayers=3,  # official DINOHead
            use_bn_in_head=False,  # official
            norm_last_layer=True,  # official: weight norm g fixed to 1 (more stable)
            student_temp=0.1,  # official
            warmup_teacher_temp=0.04,  # official
            teacher_temp=0.04,  # official (0.07 optional; >0.07 unstable)
            warmup_teacher_temp_epochs=30,  # official (0 for tiny runs)
            center_momentum=0.9,  # official
            freeze_last_layer=1,  # official: last layer frozen during the first epoch
            drop_path_rate=0.1,  # official: stochastic depth in the student only
            global_crops_scale=[0.4, 1.0],  # official
            local_crops_number=8,  # official
            local_crops_scale=[0.05, 0.4],  # official
            local_crop_size=96,  # official
            export="teacher",  # official eval_linear.py / eval_knn.py: --checkpoint_key teacher
            # The DINO/iBOT loss is no model-selection score: centring and teacher sharpening make it rise
            # while features improve (measured on digits: val loss 5.7 -> 8.5 over 3 epochs).
            export_epoch="last",
        )
        return cfg

    default_sources = {
        "backbone": "Gröger et al. Table 1 (ViT-tiny/16)",
        "init": "authors' code models/vit: vit_tiny built from scratch (random)",
        "batch_size": "Gröger et al. Table 1 (56)",
        "optimizer": "Gröger et al. Table 1 (AdamW)",
        "lr": "Gröger et al. Table 1 (5e-4)",
        "lr_scaling": "authors' code trainers/dino_trainer.py / official main_dino.py: lr * batch * world / 256",
        "lr_schedule": "Gröger et al. Table 1 (cosine) / official main_dino.py",
        "min_lr": "official main_dino.py (1e-6)",
        "warmup_epochs": "official main_dino.py (10)",
        "weight_decay": "official main_dino.py (0.04)",
        "weight_decay_end": "official main_dino.py (0.4, cosine)",
        "clip_grad": "official main_dino.py (3.0)",
        "clip_mode": "official utils.clip_gradients (each parameter's gradient on its own)",
        "momentum_teacher": "official main_dino.py (0.996, cosine to 1)",
        "image_size": "Gröger et al. sec. 3 / official main_dino.py (global crops 224)",
        "out_dim": "Caron et al. 2021 (65536 prototypes); 4096-8192 suit small data sets",
        "hidden_dim": "official DINOHead (2048)",
        "bottleneck_dim": "official DINOHead (256)",
        "head_nlayers": "official DINOHead (3)",
        "use_bn_in_head": "official main_dino.py (false for ViTs)",
        "norm_last_layer": "official main_dino.py (true: weight-norm g fixed to 1)",
        "student_temp": "official DINOLoss (0.1)",
        "warmup_teacher_temp": "official main_dino.py (0.04)",
        "teacher_temp": "official main_dino.py (0.04; 0.07 optional)",
        "warmup_teacher_temp_epochs": "official main_dino.py (30 epochs; 0 for tiny runs)",
        "center_momentum": "official DINOLoss (0.9)",
        "freeze_last_layer": "official main_dino.py (last layer frozen during the first epoch)",
        "drop_path_rate": "official main_dino.py (0.1, student only)",
        "global_crops_scale": "official main_dino.py (0.4, 1)",
        "local_crops_number": "official main_dino.py (8)",
        "local_crops_scale": "official main_dino.py (0.05, 0.4)",
        "local_crop_size": "official DataAugmentationDINO (96 px)",
        "export": "official eval_linear.py / eval_knn.py evaluate the teacher (--checkpoint_key teacher)",
        "export_epoch": "authors' code trainers/dino_trainer.py (model_best.pth is rewritten at every save: the "
        "last epoch) / official DINO evaluates the final checkpoint",
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.check(cfg)  # every key validated before any network is built
        self.views = MultiCrop.from_config(cfg)
        self.student = self.build_net(cfg, cfg["init"], cfg["drop_path_rate"], cfg["norm_last_layer"])
        # the teacher is built without drop path (official) and starts as a copy of the student's weights
        self.teacher = self.build_net(cfg, "random", 0.0, True)
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.loss = self.build_loss(cfg)
        self._temps: np.ndarray | None = None

    @classmethod
    def check(cls, cfg: dict[str, Any]) -> None:
        """Validate the method's config keys (UsageError naming the key)."""
        check_config(
            cfg,
            ints=(
                "out_dim",
                "hidden_dim",
                "bottleneck_dim",
                "head_nlayers",
                "warmup_teacher_temp_epochs",
                "freeze_last_layer",
            ),
            positives=("out_dim", "bottleneck_dim", "student_temp", "warmup_teacher_temp", "teacher_temp"),
            unit=("center_momentum", "drop_path_rate"),
        )
        check_export(cfg)
        MultiCrop.from_config(cfg)
        resolve_gpu_augment(cfg.get("gpu_augment", "auto"), "cpu")

    @classmethod
    def build_net(cls, cfg: dict[str, Any], init: str, drop_path: float, norm_last_layer: bool) -> nn.Module:
        """Backbone + head (student or teacher)."""
        backbone = create_backbone(
            cfg["backbone"], init, drop_path_rate=drop_path, model_kwargs=cfg["backbone_kwargs"]
        )
        head = DINOHead(
            feature_dim_of(backbone),
            cfg["out_dim"],
            use_bn=cfg["use_bn_in_head"],
            norm_last_layer=norm_last_layer,
            nlayers=cfg["head_nlayers"],
            hidden_dim=cfg["hidden_dim"],
            bottleneck_dim=cfg["bottleneck_dim"],
        )
        return MultiCropNet(backbone, head)

    @classmethod
    def build_loss(cls, cfg: dict[str, Any]) -> nn.Module:
        return DINOLoss(
            cfg["out_dim"],
            n_global=2,
            student_temp=cfg["student_temp"],
            center_momentum=cfg["center_momentum"],
            teacher_temp=cfg["teacher_temp"],
        )

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        """Multi-crop views; with `gpu_augment` uint8 crops + photometric parameters (see device_augment)."""
        return self.views.on_device(photometric_on_device(self, self.cfg))

    def device_augment(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """Colour jitter, grayscale, blur, solarisation and normalisation of uint8 views, batched."""
        return augment_batch(batch, self.views.mean, self.views.std)

    def epoch_teacher_temps(self, epochs: int) -> np.ndarray:
        c = self.cfg
        return teacher_temp_schedule(
            c["warmup_teacher_temp"], c["teacher_temp"], c["warmup_teacher_temp_epochs"], epochs
        )

    def schedules(self, epochs: int, iters_per_epoch: int) -> dict[str, np.ndarray]:
        """teacher_temp per iteration (the official per-epoch value repeated within each epoch)."""
        self._temps = self.epoch_teacher_temps(epochs)
        return {"teacher_temp": np.repeat(self._temps, iters_per_epoch)}

    def teacher_temp_at(self, ctx: StepContext) -> float:
        """The teacher temperature of ctx's epoch (constant within an epoch, so validation steps agree)."""
        return schedule_at_epoch(self._temps, self.epoch_teacher_temps, ctx.epoch)

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.device_augment(batch, ctx)  # no-op when the engine already did it
        globals_ = list(batch["globals"])
        crops = globals_ + list(batch.get("locals", []))
        temp = self.teacher_temp_at(ctx)
        with torch.no_grad():
            teacher_out = self.teacher(globals_)
            health = distribution_health(self.loss.teacher_probs(teacher_out, temp))
        student_out = self.student(crops)
        loss = self.loss(student_out, teacher_out, temp, update_center=ctx.training)
        logs = {  # the temperature itself is in schedules(), recorded by the engine
            **health,
            # loss = mean over pairs of H(teacher) + KL(teacher || student): KL ~ 0 means the student copies
            "kl_teacher_student": float(loss.detach()) - health["teacher_entropy"],
        }
        return loss, logs

    def before_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.epoch < self.cfg["freeze_last_layer"]:
            cancel_last_layer_grads(self.student)

    def after_optimizer_step(self, ctx: StepContext) -> None:
        if ctx.training:
            ema_update(self.teacher, self.student, ctx.momentum)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("teacher.",)

    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        return collapse_from_logs(epoch_logs, self.cfg["out_dim"])

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        """The teacher's backbone (config `export`, default "teacher", as the official evaluation) or the
        student's."""
        net = self.teacher if self.cfg["export"] == "teacher" else self.student
        return exported_vit(self.cfg, self.name, net.backbone)
