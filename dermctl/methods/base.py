"""What a pretraining method is, for the engine: the interface and the method registry.

A method is one file in this package holding its loss (a small, pure `nn.Module` or function), its heads,
its views (augmentation policy) and its method-specific schedules, plus a `PretrainMethod` subclass that
ties them together. The engine (`dermctl.train.engine`) owns everything shared: data loading, optimiser,
lr / weight-decay / EMA-momentum schedules, precision, clipping, checkpoints, early stopping, health checks.

Config: a flat dict. `ENGINE_DEFAULTS` holds the keys every method has; a method's `defaults()` returns
them updated with its paper's values (Table 1 of Gröger et al. plus the original paper's recipe) and its
own keys. Users override any key with `--config FILE` or `--set key=value`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dermctl.methods.augment import IMAGENET_MEAN, IMAGENET_STD
from dermctl.models.backbone import BackboneMeta, default_feature_rule

ENGINE_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50",  # any timm model name
    "backbone_kwargs": {},  # extra timm.create_model arguments, e.g. {"patch_size": 8}; kept in the export
    "init": "random",  # random | imagenet | path to weights
    "epochs": 100,  # upper bound; early stopping usually ends the run first
    "batch_size": 64,  # per process (per GPU); global batch = batch_size * world size
    "global_batch": None,  # None, or the global batch (replaces batch_size; divisible by the world size)
    "sync_bn": "auto",  # BatchNorm synchronised across processes: true | false | auto (simclr, byol)
    "optimizer": "adamw",  # sgd | adam | adamw
    "lr": 1e-3,  # base learning rate, after `lr_scaling`
    "lr_scaling": "none",  # none | linear256: lr * global_batch / 256 (DINO/iBOT rule)
    "lr_schedule": "cosine",  # none | cosine (to min_lr, per iteration)
    "min_lr": 1e-6,
    "warmup_epochs": 0,
    "weight_decay": 0.0,
    "weight_decay_end": None,  # None = constant weight decay; else cosine from weight_decay to this
    "sgd_momentum": 0.9,
    "clip_grad": 0.0,  # max gradient norm; 0 = off
    "clip_mode": "global",  # global (one norm over all gradients) | per_param (DINO/iBOT's clip_gradients)
    "momentum_teacher": 0.996,  # EMA methods: base momentum, cosine to 1 (ignored by others)
    "image_size": 224,
    "patience": 5,  # early stopping: epochs without val-loss improvement (the study used 5)
    "min_delta": 0.0,
    "export_epoch": "last",  # last | best (lowest val loss): which epoch's backbone is exported
    "val_every": 1,
    "num_workers": -1,  # -1: from the CPU count
    "precision": "auto",  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    "seed": 0,
    "deterministic": False,
    "monitor_task": None,  # a labelled task embedded every `monitor_every` epochs; kNN macro-F1 logged
    "monitor_every": 5,
    # data path (docs/data-path.md)
    "cache_size": 256,  # decode cache: shorter side in px of the cached images; 0 = read originals
    "gpu_augment": "auto",  # photometric augmentation batched on the device: true | false | auto (CUDA)
}

# Where each engine default comes from. A method's `default_sources` names the source of every key it sets
# or adds; `--print-config` shows the merged table and docs/methods-*.md is generated from it (a test keeps
# the two in step). "Gröger et al." is the study; "authors' code" is their PyPI package
# self-supervised-dermatology 0.0.16 (file names relative to it); "dermctl:" marks our own choices.
ENGINE_SOURCES: dict[str, str] = {
    "backbone": "dermctl: any timm model name",
    "backbone_kwargs": "dermctl: none (timm's architecture as named)",
    "init": "dermctl: random; methods set the study's value",
    "epochs": "dermctl: an upper bound; Gröger et al. stop on the val loss (patience 5)",
    "batch_size": "dermctl placeholder; methods set Gröger et al. Table 1",
    "global_batch": "dermctl: optional, replaces batch_size under DDP",
    "sync_bn": "auto = synchronised for SimCLR/BYOL (Chen et al. / Grill et al.: global BN) and ColorMe "
    "(authors' code trainers/colorme_trainer.py: convert_sync_batchnorm) under DDP",
    "optimizer": "dermctl placeholder; methods set Gröger et al. Table 1",
    "lr": "dermctl placeholder; methods set Gröger et al. Table 1",
    "lr_scaling": "dermctl: none; methods with a schedule set the authors' code (lr x batch / 256)",
    "lr_schedule": "dermctl placeholder; methods set Gröger et al. Table 1",
    "min_lr": "official DINO main_dino.py (1e-6)",
    "warmup_epochs": "dermctl: no warm-up unless the method's recipe has one",
    "weight_decay": "dermctl: none unless the method's recipe has one",
    "weight_decay_end": "dermctl: constant weight decay unless the method's recipe has a schedule",
    "sgd_momentum": "dermctl: 0.9 for SGD; ColorMe sets the authors' 0",
    "clip_grad": "dermctl: off unless the method's recipe clips",
    "clip_mode": "dermctl: one global norm; DINO/iBOT set the official per-parameter clipping",
    "momentum_teacher": "BYOL (Grill et al. sec. 3.2) / official DINO: 0.996, cosine to 1",
    "image_size": "Gröger et al. sec. 3: 224 x 224",
    "patience": "Gröger et al. sec. 3: stop after 5 epochs without val-loss improvement",
    "export_epoch": "authors' code pkg/embedder.py (the released weights are checkpoint-epoch100.pth, the last "
    "save; no trainer selects an epoch on val loss); Gröger et al. say when training stops, not which epoch is kept",
    "min_delta": "dermctl: any improvement counts",
    "val_every": "Gröger et al.: the val loss every epoch",
    "num_workers": "dermctl: from the CPU count",
    "precision": "dermctl: bf16 on CUDA, fp32 on CPU",
    "seed": "dermctl",
    "deterministic": "dermctl: off (faster kernels)",
    "monitor_task": "dermctl: off; kNN on a task's val split when set",
    "monitor_every": "dermctl",
    "cache_size": "dermctl data path (docs/data-path.md)",
    "gpu_augment": "dermctl data path (docs/data-path.md)",
}


@dataclass
class StepContext:
    """Where training is, passed to every method hook."""

    it: int  # global iteration (0-based)
    epoch: int  # 0-based
    training: bool  # False during validation: no state may change (centres, EMA)
    lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.0  # EMA momentum of the teacher at this iteration


class PretrainMethod(nn.Module):
    """Base class of every method; subclasses register with `@register_method`."""

    name: ClassVar[str]
    uses_ema: ClassVar[bool] = False  # has a teacher/target network updated only by EMA
    # key -> where the method's default comes from, for every key `defaults()` sets or adds
    default_sources: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg

    # -- configuration --------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Full resolved default config of this method (engine keys + method keys)."""
        return copy.deepcopy(ENGINE_DEFAULTS)  # no config shares a mutable default (backbone_kwargs)

    @classmethod
    def sources(cls) -> dict[str, str]:
        """The source of every default in `defaults()`: the engine's, overridden by the method's."""
        return {**ENGINE_SOURCES, **cls.default_sources}

    # -- data -----------------------------------------------------------------------------
    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        """PIL RGB image -> dict of tensors / lists of tensors (collated by default_collate).
        Validation uses the same random views (a seeded loader makes the val loss comparable)."""
        raise NotImplementedError

    def device_augment(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        """The batch on the training device -> the batch the step consumes. Methods whose transform leaves
        work to the device (config `gpu_augment`: uint8 crops + photometric parameters) finish it here,
        batched; the default is the identity. Called by the engine under torch.no_grad, before autocast;
        must be harmless on a batch it already finished."""
        return batch

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (scalar tensor) and health/log values for one batch."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        """`training_step`, so that the engine can call the method through DistributedDataParallel
        (DDP hooks its gradient all-reduce onto `forward`)."""
        return self.training_step(batch, ctx)

    def schedules(self, epochs: int, iters_per_epoch: int) -> dict[str, np.ndarray]:
        """Method-specific per-iteration schedules (e.g. DINO's teacher temperature)."""
        return {}

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """After backward and gradient clipping, before the optimiser step (e.g. cancel last-layer gradients,
        in the official DINO order: clip, then cancel)."""

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """After the optimiser step (e.g. EMA update of the teacher with ctx.momentum)."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters in groups; `apply_wd: False` for biases and norm parameters."""
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad or n.startswith(self.frozen_prefixes()):
                continue
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]

    def frozen_prefixes(self) -> tuple[str, ...]:
        """Parameter name prefixes the optimiser must never see (EMA teachers/targets)."""
        return ()

    # -- health and export ----------------------------------------------------------------
    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        """A one-line reason when the epoch's mean logs show collapse, else None."""
        return None

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        """The backbone to export (student / online encoder) and its description."""
        raise NotImplementedError


METHODS: dict[str, type[PretrainMethod]] = {}


def register_method(cls: type[PretrainMethod]) -> type[PretrainMethod]:
    METHODS[cls.name] = cls
    return cls


def rgb_backbone_meta(cfg: dict[str, Any], method: str, backbone: nn.Module) -> BackboneMeta:
    """Export description of an RGB encoder fed ImageNet-normalised images: the paper's feature rule for
    its architecture (avgpool for a CNN, cls4 for a ViT, as when SimCLR/BYOL run on ViT-tiny)."""
    return BackboneMeta(
        timm_name=cfg["backbone"],
        feature_rule=default_feature_rule(backbone),
        input_size=int(cfg["image_size"]),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        in_chans=3,
        channels="rgb",
        model_kwargs=dict(cfg["backbone_kwargs"]),
        extra={"method": method},
    )
