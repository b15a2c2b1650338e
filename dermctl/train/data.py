"""Pretraining data: which images are trained on, and the seeded Dataset / per-epoch batches.

Images are checked against their manifest's sha256 first (`dermctl.data.verify`).
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
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from dermctl.data.cache import DecodeCache
from dermctl.data.images import open_rgb
from dermctl.data.manifest import Manifest, fill_hashes, find_manifests, read_manifest
from dermctl.data.verify import verify_images
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
    train_sha256: list[str] = field(default_factory=list)  # parallel to `train` (decode-cache keys)
    val_sha256: list[str] = field(default_factory=list)  # parallel to `val`


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
    train_sha: list[str] = []
    val_sha: list[str] = []
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
            # Each image must still be the one the manifest lists (cheap: ingest's hash cache).
            verify_images(m, workspace.manifests)
            for row in m.rows:
                if row.sha256 in excluded_hashes:
                    excluded += 1
                    continue
                if row.split == "train":
                    train.append(m.resolve(row))
                    train_sha.append(row.sha256)
                elif row.split == "val":
                    val.append(m.resolve(row))
                    val_sha.append(row.sha256)
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
        val_sha = [h for i, h in enumerate(train_sha) if i in val_idx]
        train = [p for i, p in enumerate(train) if i not in val_idx]
        train_sha = [h for i, h in enumerate(train_sha) if i not in val_idx]
        held_out = True
    return PretrainData(train, val, hashes, excluded, held_out, skipped, train_sha, val_sha)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """One 63-bit seed per (run seed, epoch, image index)."""
    ss = np.random.SeedSequence([seed, epoch + 1, index])  # +1: VAL_EPOCH is -1
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


@contextlib.contextmanager
def seeded_rng(seed: int, *, restore: bool = True) -> Iterator[None]:
    """Seed python `random`, numpy and the torch CPU generator for a block, then restore all three.

    `restore=False` only seeds: for loader workers, whose generators nothing else draws from, because
    saving and restoring numpy's state costs about 0.4 ms, as much as decoding a small image."""
    if not restore:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        yield
        return
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
    (seed, epoch, index). Corrupt images are a DataError naming the file.

    With a `cache` (`dermctl.data.cache.DecodeCache`) images come from the decode cache (resized copies,
    decoded from the originals only on first use), keyed by `hashes[index]` (the manifest's sha256)."""

    def __init__(
        self,
        paths: list[Path],
        transform: Callable[[Any], Any],
        seed: int,
        *,
        cache: DecodeCache | None = None,
        hashes: Sequence[str] | None = None,
    ) -> None:
        self.paths, self.transform, self.seed = list(paths), transform, seed
        self.cache = cache
        self.hashes = list(hashes) if hashes else None
        if self.hashes is not None and len(self.hashes) != len(self.paths):
            raise ValueError(f"ImageDataset: {len(self.hashes)} hashes for {len(self.paths)} paths")
        self._loaders: dict[tuple[Any, ...], DataLoader] = {}  # persistent loaders (make_loader)

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict[str, Any]:
        # worker processes started by spawn get the dataset, never the loaders holding them
        return {**self.__dict__, "_loaders": {}}

    def image(self, index: int) -> Any:
        """The PIL image of `index`: from the decode cache when there is one, else the original."""
        path = self.paths[index]
        try:
            if self.cache is not None:
                return self.cache.image(path, self.hashes[index] if self.hashes else None)
            return open_rgb(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode image: {exc}") from exc

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        img = self.image(index)
        # In the main process (num_workers 0) the training RNG must survive the item; in a worker nothing
        # else draws from it, and each item reseeds anyway.
        with seeded_rng(item_seed(self.seed, epoch, index), restore=get_worker_info() is None):
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


PREFETCH_FACTOR = 4  # batches each worker keeps ready (torch's default is 2)


class EpochBatches:
    """A batch sampler whose batches are replaced every epoch, so that one DataLoader (and its worker
    processes) serves every epoch of a run."""

    def __init__(self, batches: list[list[tuple[int, int]]] | None = None) -> None:
        self.batches = list(batches or [])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(
    dataset: ImageDataset,
    batches: list[list[tuple[int, int]]],
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator | None = None,
    *,
    persistent: bool = True,
    prefetch_factor: int = PREFETCH_FACTOR,
) -> DataLoader:
    """A loader over fixed batches. Pass `generator` so that starting the loader does not draw from the
    global torch RNG (which would break resume equality).

    With workers, the loader is persistent: the first call for a dataset starts its workers (they keep
    the dataset, the transform and open files), later calls with the same settings hand the same loader
    the next epoch's batches, so no epoch pays for starting processes. Workers keep `prefetch_factor`
    batches each in flight; `pin_memory` (CUDA) makes host-to-device copies asynchronous. Views do not
    depend on the worker: each image's RNG is seeded by (seed, epoch, index)."""
    if num_workers <= 0 or not persistent:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=max(num_workers, 0),
            pin_memory=pin_memory,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            generator=generator,
        )
    key = (num_workers, pin_memory, prefetch_factor)
    loader = dataset._loaders.get(key)
    if loader is None:
        loader = DataLoader(
            dataset,
            batch_sampler=EpochBatches(),
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=True,
            prefetch_factor=prefetch_factor,
            generator=generator,
        )
        dataset._loaders[key] = loader
    loader.batch_sampler.batches = list(batches)
    return loader


def close_loaders(dataset: ImageDataset) -> None:
    """Stop the persistent workers of `dataset` (they also stop when the dataset is garbage collected)."""
    loaders, dataset._loaders = dataset._loaders, {}
    for loader in loaders.values():
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def decode_cache_for(cfg: dict[str, Any], workspace: Workspace) -> DecodeCache | None:
    """The decode cache a config asks for (`cache_size` px, 0 = none), validated: an int >= 0 and, when
    on, at least `image_size` (a smaller cache would make every crop an upscale)."""
    size = cfg.get("cache_size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UsageError(
            f"config key 'cache_size' = {size!r}: expected an integer >= 0 (0 = no decode cache)"
        )
    if size == 0:
        return None
    image_size = cfg.get("image_size", 0)
    if isinstance(image_size, int) and size < image_size:
        raise UsageError(
            f"config key 'cache_size' = {size}: expected 0 or at least image_size ({image_size}), "
            "or crops would be upscaled from the cache"
        )
    return DecodeCache.in_workspace(workspace, size)


def pretrain_datasets(
    pdata: PretrainData, method: Any, cfg: dict[str, Any], workspace: Workspace
) -> tuple[ImageDataset, ImageDataset]:
    """Train and val datasets of a run: the method's views (call after moving the method to its device,
    so `gpu_augment = "auto"` sees it) over the decode cache when `cache_size` > 0."""
    cache = decode_cache_for(cfg, workspace)
    train = ImageDataset(
        pdata.train, method.transform(True), cfg["seed"], cache=cache, hashes=pdata.train_sha256 or None
    )
    val = ImageDataset(
        pdata.val, method.transform(False), cfg["seed"], cache=cache, hashes=pdata.val_sha256 or None
    )
    return train, val


def check_files(paths: list[Path]) -> None:
    """Up-front check that every image exists, before long work starts."""
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p}: image listed in a --data manifest not found")
