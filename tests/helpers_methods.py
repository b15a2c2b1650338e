"""A tiny registered test-only method exercising every engine hook (EMA target, views, logs, schedules).

BYOL-like: online backbone + projector, EMA target, loss = 2 - 2 cos(online(v1), target(v2)). Knobs:
`nan_at_it` (iteration whose loss is NaN, -1 = never) and `collapse_std` (collapse threshold of the
logged feature std) let tests drive divergence and collapse.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms as T

from dermctl.data.manifest import Manifest, Row, write_manifest
from dermctl.methods.base import ENGINE_DEFAULTS, PretrainMethod, StepContext, register_method
from dermctl.models.backbone import BackboneMeta, create_backbone


@register_method
class TinyMethod(PretrainMethod):
    name = "tinytest"
    uses_ema = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        cfg = dict(ENGINE_DEFAULTS)
        cfg.update(
            backbone="resnet10t",
            image_size=32,
            batch_size=4,
            epochs=3,
            optimizer="sgd",
            lr=0.05,
            num_workers=0,
            proj_dim=16,
            nan_at_it=-1,
            collapse_std=0.0,
        )
        return cfg

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.backbone = create_backbone(cfg["backbone"], cfg["init"])
        self.projector = nn.Linear(int(self.backbone.num_features), int(cfg["proj_dim"]))
        self.target = nn.ModuleDict(
            {"backbone": copy.deepcopy(self.backbone), "projector": copy.deepcopy(self.projector)}
        )
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self._ramp: np.ndarray | None = None

    def transform(self, training: bool) -> Callable[[Any], dict[str, Any]]:
        size = int(self.cfg["image_size"])
        view = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.5, 1.0)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize((0.5,) * 3, (0.25,) * 3),
            ]
        )
        return lambda img: {"views": [view(img), view(img)]}

    def schedules(self, epochs: int, iters_per_epoch: int) -> dict[str, np.ndarray]:
        self._ramp = np.linspace(0.0, 1.0, epochs * iters_per_epoch)
        return {"ramp": self._ramp}

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = batch["views"]
        if ctx.training:  # draws from the global torch RNG, so resume must restore it
            v1 = v1 + 0.01 * torch.randn_like(v1)
        online = F.normalize(self.projector(self.backbone(v1)), dim=-1)
        with torch.no_grad():
            target = F.normalize(self.target["projector"](self.target["backbone"](v2)), dim=-1)
        loss = (2 - 2 * (online * target).sum(-1)).mean()
        if ctx.training:
            self.steps_seen += 1
            if ctx.it == int(self.cfg["nan_at_it"]):
                loss = loss * float("nan")
        return loss, {"feature_std": float(online.detach().std(0, correction=0).mean())}

    def after_optimizer_step(self, ctx: StepContext) -> None:
        with torch.no_grad():
            for t, s in zip(
                self.target.parameters(),
                [*self.backbone.parameters(), *self.projector.parameters()],
                strict=True,
            ):
                t.mul_(ctx.momentum).add_(s.detach(), alpha=1 - ctx.momentum)

    def frozen_prefixes(self) -> tuple[str, ...]:
        return ("target.",)

    def collapse_reason(self, epoch_logs: dict[str, float]) -> str | None:
        std = epoch_logs.get("feature_std", 1.0)
        if std < float(self.cfg["collapse_std"]):
            return f"feature_std {std:.3g} below {self.cfg['collapse_std']}"
        return None

    def export(self) -> tuple[nn.Module, BackboneMeta]:
        size = int(self.cfg["image_size"])
        return self.backbone, BackboneMeta(
            self.cfg["backbone"], "avgpool", input_size=size, mean=(0.5,) * 3, std=(0.25,) * 3
        )


def make_images(folder: Path, n: int, seed: int = 0, size: int = 24, prefix: str = "img") -> list[Path]:
    """`n` distinct small random RGB PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        p = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def make_corpus(path: Path, images: list[Path], splits: list[str] | None = None) -> Path:
    """A hand-made corpus manifest (paths only, no hashes) next to the images."""
    rows = [
        Row(path=str(p), split=(splits[i] if splits else "train"), role="corpus")
        for i, p in enumerate(images)
    ]
    write_manifest(Manifest(name=path.stem, rows=rows), path)
    return path


def make_task(path: Path, images: list[Path], n_classes: int = 2, n_val: int = 0) -> Path:
    """A labelled task manifest: alternating classes, first half train (its last `n_val` rows val),
    second half test."""
    half = len(images) // 2

    def split(i: int) -> str:
        return "test" if i >= half else "val" if i >= half - n_val else "train"

    rows = [
        Row(path=str(p), label=f"c{i % n_classes}", split=split(i), role="task") for i, p in enumerate(images)
    ]
    write_manifest(Manifest(name=path.stem, rows=rows), path)
    return path
