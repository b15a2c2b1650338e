"""Pretraining data: which images are trained on, and the seeded Dataset / per-epoch batches.

Evaluation images never enter pretraining (Gröger et al. pretrain on data disjoint from the downstream
tasks): every row whose sha256 belongs to a task manifest of the workspace or to an `--exclude` manifest
is dropped and counted. Labels are ignored. Train rows are trained on; val rows give the val loss; a corpus
without val rows has a seeded 5% of its train rows held out.

Reproducibility: an epoch's order is a permutation seeded by (seed, epoch), and every image's
augmentation RNG (python `random`, numpy, torch CPU) is seeded by (seed, epoch, index), so a resumed run
sees exactly the batches and views an uninterrupted one would, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dermctl.data.images import open_rgb
from dermctl.data.manifest import Manifest, fill_hashes, find_manifests, read_manifest
from dermctl.errors import DataError, UsageError
from dermctl.provenance import sha256_file
from dermctl.workspace import Workspace

VAL_FRACTION = 0.05
VAL_EPOCH = -1  # the "epoch" whose seeds give the fixed validation views


@dataclass
class PretrainData:
    """The images of one pretraining run, after exclusion."""

    train: list[Path]
    val: list[Path]
    manifests: dict[str, str]  # data manifest path -> sha256 of the file
    excluded: int  # rows dropped because they belong to an evaluation task
    held_out: bool  # True when val was carved out of train (no val rows given)
    skipped_task_manifests: list[str] = field(default_factory=list)


def _excluded_hashes(workspace: Workspace, exclude: list[Path], allow_task_images: bool) -> set[str]:
    hashes: set[str] = set()
    manifests: list[Manifest] = []
    if not allow_task_images and workspace.manifests.is_dir():
        for path in sorted(workspace.manifests.glob("*.csv")):
            if path.name.startswith("."):
                continue
            m = read_manifest(path)
            if m.is_task:
                manifests.append(m)
    for source in exclude:
        manifests.extend(read_manifest(p) for p in find_manifests(source))
    for m in manifests:
        fill_hashes(m)
        hashes.update(r.sha256 for r in m.rows)
    return hashes


def load_pretrain_data(
    data: list[Path],
    workspace: Workspace,
    *,
    exclude: list[Path] | None = None,
    allow_task_images: bool = False,
    seed: int = 0,
) -> PretrainData:
    """Read the `--data` manifests (files or folders), drop evaluation images, split train / val."""
    if not data:
        raise UsageError("--data: no manifest given (expected manifest CSV files or folders of them)")
    excluded_hashes = _excluded_hashes(workspace, list(exclude or []), allow_task_images)
    train: list[Path] = []
    val: list[Path] = []
    hashes: dict[str, str] = {}
    skipped: list[str] = []
    excluded = 0
    for source in data:
        direct = Path(source).is_file()
        for path in find_manifests(source):
            m = read_manifest(path)
            if m.is_task and not allow_task_images:
                if direct:
                    raise UsageError(
                        f"--data: {path} is a task manifest (evaluation images never enter pretraining); "
                        "pass --allow-task-images to train on it anyway"
                    )
                skipped.append(str(path))
                continue
            hashes[str(m.path)] = sha256_file(path)
            fill_hashes(m)
            for row in m.rows:
                if row.sha256 in excluded_hashes:
                    excluded += 1
                    continue
                if row.split == "train":
                    train.append(m.resolve(row))
                elif row.split == "val":
                    val.append(m.resolve(row))
    if not train:
        raise DataError(
            f"--data: no training images left in {', '.join(map(str, data))} after excluding {excluded}"
        )
    held_out = False
    if not val:
        # A corpus without val rows: hold out a seeded 5% (at least one image) for the val loss.
        n_val = max(1, round(VAL_FRACTION * len(train)))
        if len(train) - n_val < 1:
            raise DataError(
                f"--data: {len(train)} training image(s) are too few to hold out a validation set"
            )
        perm = np.random.default_rng(seed).permutation(len(train))
        val_idx = set(perm[:n_val].tolist())
        val = [p for i, p in enumerate(train) if i in val_idx]
        train = [p for i, p in enumerate(train) if i not in val_idx]
        held_out = True
    return PretrainData(train, val, hashes, excluded, held_out, skipped)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run seed, epoch, image index)."""
    ss = np.random.SeedSequence([seed, epoch + 1, index])  # +1: VAL_EPOCH is -1
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed python `random`, numpy and the torch CPU generator for a block, then restore all three."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class ImageDataset(Dataset):
    """Images through `transform`, keyed by (index, epoch) so that each view is seeded by
    (seed, epoch, index). Corrupt images are a DataError naming the file."""

    def __init__(self, paths: list[Path], transform: Callable[[Any], Any], seed: int) -> None:
        self.paths, self.transform, self.seed = list(paths), transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        path = self.paths[index]
        try:
            img = open_rgb(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode image: {exc}") from exc
        with seeded_rng(item_seed(self.seed, epoch, index)):
            return self.transform(img)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of an epoch, a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def epoch_batches(
    order: list[int], batch_size: int, epoch: int, *, drop_last: bool, skip: int = 0
) -> list[list[tuple[int, int]]]:
    """Batches of (index, epoch) keys; the first `skip` batches (already trained on) are left out."""
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return [[(i, epoch) for i in b] for b in batches[skip:]]


def resolve_num_workers(num_workers: int) -> int:
    """-1: one per CPU core but one, at most 8."""
    if num_workers >= 0:
        return num_workers
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: ImageDataset,
    batches: list[list[tuple[int, int]]],
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A loader over fixed batches. Pass `generator` so that starting the loader does not draw from the
    global torch RNG (which would break resume equality)."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=generator,
    )


def check_files(paths: list[Path]) -> None:
    """Up-front check that every image exists, before long work starts."""
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image listed in a --data manifest not found")
