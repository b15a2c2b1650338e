"""Training health: per-epoch means of a method's logs, and the optional kNN monitor on a labelled task.

The monitor embeds a task's train and val images with the current student backbone (the method's
feature rule) and logs the weighted kNN macro-F1 on val (k=20, T=0.07 as in DINO and Gröger et al.).
It never reads the test split: a number watched while choosing when to stop or which run to keep is a
selection criterion, and selecting on test would make the later test scores optimistic. A task without
labelled val rows is refused. Labels are used only for this number, never for training.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermctl.data.images import open_rgb
from dermctl.data.manifest import Manifest, read_manifest
from dermctl.errors import DataError
from dermctl.eval.knn import knn_predict
from dermctl.eval.metrics import macro_f1
from dermctl.models.backbone import BackboneMeta, extract_features
from dermctl.models.transforms import backbone_eval_transform
from dermctl.runtime.device import computing_on


class EpochLogs:
    """Running sums of a method's per-step logs, weighted by batch size."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0

    def add(self, logs: dict[str, float], n: int) -> None:
        for k, v in logs.items():
            self.sums[k] += float(v) * n
        self.count += n

    def means(self) -> dict[str, float]:
        return {k: v / self.count for k, v in self.sums.items()} if self.count else {}

    def state_dict(self) -> dict[str, object]:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.sums = defaultdict(float, {str(k): float(v) for k, v in dict(state["sums"]).items()})  # type: ignore[arg-type]
        self.count = int(state["count"])  # type: ignore[arg-type]


def knn_macro_f1(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, n_classes: int
) -> float:
    """Weighted kNN (k=20, T=0.07, `dermctl.eval.knn`) macro-F1 of (test_x, test_y) against the training
    rows; the monitor passes its val rows."""
    pred, _ = knn_predict(train_x, train_y, test_x, n_classes, k=20, T=0.07)
    return float(macro_f1(test_y, np.asarray(pred), n_classes))


class KnnMonitor:
    """Embeds one labelled task with the current backbone and scores kNN macro-F1 of its val split
    against its train split. The test split is never read (module docstring)."""

    def __init__(self, task_manifest: Path, batch_size: int = 64) -> None:
        self.manifest: Manifest = read_manifest(task_manifest)
        self.classes = self.manifest.classes
        if len(self.classes) < 2:
            raise DataError(f"--monitor-task: {task_manifest} has fewer than two classes")
        self.train = self._labelled("train")
        self.val = self._labelled("val")
        if not self.train:
            raise DataError(f"--monitor-task: {task_manifest} has no labelled train rows")
        if not self.val:
            raise DataError(
                f"--monitor-task: {task_manifest} has no labelled val rows and the monitor never scores "
                "on test; re-ingest the task with --val-fraction above 0 (default 0.15) or mark some "
                "train rows split=val"
            )
        for p, _ in self.train + self.val:
            if not p.is_file():
                raise DataError(f"--monitor-task: image {p} not found")
        self.batch_size = batch_size

    def _labelled(self, split: str) -> list[tuple[Path, int]]:
        return [
            (self.manifest.resolve(r), self.classes.index(r.label))
            for r in self.manifest.split_rows(split)
            if r.label
        ]

    @torch.no_grad()
    def _embed(
        self, model: nn.Module, meta: BackboneMeta, items: list[tuple[Path, int]], device: torch.device
    ) -> np.ndarray:
        tf = backbone_eval_transform(meta)  # the preprocessing of `embed`, so the monitor agrees with knn
        out = []
        for i in range(0, len(items), self.batch_size):
            x = torch.stack([tf(open_rgb(p)) for p, _ in items[i : i + self.batch_size]]).to(device)
            feats = extract_features(model, x, meta.feature_rule)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out)

    def score(self, model: nn.Module, meta: BackboneMeta, device: torch.device) -> float:
        """kNN macro-F1 (k=20, T=0.07) of the val images against the train images, over every class."""
        was_training = model.training
        model.eval()
        try:
            train_x = self._embed(model, meta, self.train, device)
            val_x = self._embed(model, meta, self.val, device)
        finally:
            model.train(was_training)
        train_y = np.array([y for _, y in self.train])
        val_y = np.array([y for _, y in self.val])
        with computing_on(device):  # the FAISS index on the run's own GPU, not always GPU 0
            return knn_macro_f1(train_x, train_y, val_x, val_y, len(self.classes))
