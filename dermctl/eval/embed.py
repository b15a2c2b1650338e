"""Extract frozen features of every image of a task manifest into `embeddings/<model_id>/<task>.h5`.

Evaluation transform (DINO's `eval_linear.py` / `eval_knn.py`): resize the shorter side to
image_size / 0.875 (bicubic; 256 for 224), centre-crop image_size, normalise with the backbone's mean/std.
Features follow the backbone's feature rule (Gröger et al.: ResNet average pool, ViT class tokens of the
last 4 blocks). Rows are streamed to disk batch by batch into a temporary file renamed when complete.

Images are first checked against the manifest's sha256 (`dermctl.data.verify`; a changed image is refused).
An existing file is reused when its manifest hash, the hash of the images' hashes, checkpoint hash, feature
rule and image size match the current ones; anything else (or `force`) rebuilds it. The file is
`embeddings/<model_id>/<task key>.h5` (`Workspace.task_key`: tasks named alike never share a file).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermctl.data.images import open_rgb
from dermctl.data.manifest import Manifest, find_manifests, find_task, read_manifest
from dermctl.data.verify import images_key, verify_images
from dermctl.errors import DataError, DermctlError, UnavailableError, UsageError
from dermctl.eval.embeddings import EmbeddingWriter, read_attrs, sealed_path
from dermctl.eval.models import DEFAULT_BACKBONE, LoadedModel, resolve_model
from dermctl.models.backbone import FEATURE_RULES, extract_features
from dermctl.models.transforms import eval_transform
from dermctl.provenance import sha256_file
from dermctl.results import clear_unavailable, record_unavailable
from dermctl.runtime.device import resolve_device, resolve_num_workers
from dermctl.runtime.distributed import Dist, contiguous_shard, dist_from_env, gather_rows, shard_counts
from dermctl.workspace import Workspace

ProgressFn = Callable[[str, int, int], None]  # (task, rows done, rows total)


@dataclass
class EmbedOutcome:
    """What happened to one task."""

    task: str
    path: Path
    status: str  # "written" | "reused"
    n: int
    dim: int
    seconds: float
    images_per_s: float


class _ManifestImages(torch.utils.data.Dataset):
    """Images of a manifest in row order; a decode failure is returned (not raised) so that the main
    process can name the file in one line even when loading runs in worker processes."""

    def __init__(
        self, paths: list[Path], transform: Callable[[Any], torch.Tensor], channels: int, size: int
    ) -> None:
        self.paths = paths
        self.transform = transform
        self.blank = torch.zeros(channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(open_rgb(self.paths[i])), ""
        except Exception as exc:  # PIL raises many types for damaged files
            return (
                self.blank,
                f"{self.paths[i]}: cannot decode image ({type(exc).__name__}: {str(exc)[:120]})",
            )


def is_reusable(
    path: Path,
    manifest_sha256: str,
    checkpoint_sha256: str,
    feature_rule: str,
    image_size: int,
    images_sha256: str = "",
) -> bool:
    """True when `path` is a complete embeddings file built from exactly these inputs (images included:
    a file without `images_sha256`, from dermctl 0.1.0, is rebuilt)."""
    if not path.is_file():
        return False
    try:
        attrs = read_attrs(path)
    except DataError:
        return False
    return (
        attrs.get("complete") is True
        and attrs.get("manifest_sha256") == manifest_sha256
        and attrs.get("images_sha256") == images_sha256
        and attrs.get("checkpoint_sha256") == checkpoint_sha256
        and attrs.get("feature_rule") == feature_rule
        and int(attrs.get("image_size", -1)) == int(image_size)
    )


def embed_manifest(
    loaded: LoadedModel,
    manifest_path: Path,
    target: Path,
    feature_rule: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = -1,
    force: bool = False,
    progress: ProgressFn | None = None,
    dist: Dist | None = None,
    workspace: Workspace | None = None,
) -> EmbedOutcome:
    """Embed one task manifest into `target` (or reuse it); see the module docstring. The image hash
    cache is the workspace's (default: the manifest's folder).

    Under torchrun (`dist` with world size > 1) each process embeds a contiguous share of the rows and
    rank 0 gathers them in row order and writes the one file, identical to a single process's."""
    dist = dist or Dist()
    meta = loaded.meta
    rule = feature_rule or meta.feature_rule
    if rule not in FEATURE_RULES:
        raise UsageError(f"--feature-rule: {rule!r} is not one of {', '.join(FEATURE_RULES)}")
    size = int(image_size or meta.input_size)
    if size < 8:
        raise UsageError(f"--image-size: {size} is too small (expected at least 8 pixels)")
    if batch_size < 1:
        raise UsageError(f"--batch-size: {batch_size} must be at least 1")
    manifest = read_manifest(manifest_path)
    task = manifest.name
    manifest_sha = sha256_file(manifest_path)
    # Before reuse too: features of an image replaced since ingest must be neither made nor handed out.
    paths = verify_images(manifest, workspace.manifests if workspace else Path(manifest_path).parent)
    images_sha = images_key(manifest)
    if not force and is_reusable(target, manifest_sha, loaded.checkpoint_sha256, rule, size, images_sha):
        attrs = read_attrs(target)
        return EmbedOutcome(
            task, target, "reused", int(attrs.get("n", 0)), int(attrs.get("dim", 0)), 0.0, 0.0
        )
    dev = resolve_device(device, dist.local_rank if dist.enabled else None)
    model = loaded.backbone.to(dev).eval()
    n_chans = 1 if meta.channels == "green" else 3
    # One dry forward validates the feature rule against the model before any long work.
    with torch.no_grad():
        dry = extract_features(model, torch.zeros(1, n_chans, size, size, device=dev), rule)
    classes = manifest.classes
    index = {c: i for i, c in enumerate(classes)}
    attrs = {
        "task": task,
        "model_id": loaded.model_id,
        "init": loaded.init,
        "backbone": meta.timm_name,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "manifest_sha256": manifest_sha,
        "images_sha256": images_sha,
        "class_names": classes,
        "feature_rule": rule,
        "image_size": size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "channels": meta.channels,
        "n": len(paths),
    }
    start_row, stop_row = contiguous_shard(len(paths), dist)
    dataset = _ManifestImages(
        paths[start_row:stop_row], eval_transform(size, meta.mean, meta.std, meta.channels), n_chans, size
    )
    workers = resolve_num_workers(num_workers, items=len(paths))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda"
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    )
    rows = manifest.rows
    start = time.perf_counter()
    dim = 0

    def batches() -> Any:
        done = 0
        with torch.no_grad():
            for x, errors in loader:
                bad = [e for e in errors if e]
                if bad:
                    raise DataError(bad[0])
                with autocast:
                    feats = extract_features(model, x.to(dev, non_blocking=True), rule)
                out = feats.float().cpu().numpy()
                if not np.isfinite(out).all():
                    raise DataError(
                        f"{manifest_path}: the model produced NaN/Inf features (damaged checkpoint?)"
                    )
                done += out.shape[0]
                if progress is not None and dist.is_main:
                    progress(task, min(done * dist.world_size, len(rows)), len(rows))
                yield out

    if dist.enabled:
        gathered = _gather_features(batches(), dist, dev, len(rows), int(dry.shape[1]))
        if dist.is_main:
            with sealed_path(target) as tmp:
                writer = EmbeddingWriter(tmp, len(rows), **_columns(manifest, index), attrs=attrs)
                try:
                    writer.write(gathered)
                    writer.close({"dim": int(gathered.shape[1])})
                except BaseException:
                    writer.abort()
                    raise
        dist.barrier()  # the file is complete before any process goes on
        seconds = time.perf_counter() - start
        return EmbedOutcome(
            task, target, "written", len(rows), int(dry.shape[1]), seconds, len(rows) / max(seconds, 1e-9)
        )

    with sealed_path(target) as tmp:
        writer = EmbeddingWriter(tmp, len(rows), **_columns(manifest, index), attrs=attrs)
        try:
            for out in batches():
                dim = out.shape[1]
                writer.write(out)
            writer.close({"dim": dim})
        except BaseException:
            writer.abort()
            raise
    seconds = time.perf_counter() - start
    return EmbedOutcome(task, target, "written", len(rows), dim, seconds, len(rows) / max(seconds, 1e-9))


def _columns(manifest: Manifest, index: dict[str, int]) -> dict[str, Any]:
    rows = manifest.rows
    return {
        "labels": [index[r.label] if r.label in index else -1 for r in rows],
        "split": [r.split for r in rows],
        "paths": [r.path for r in rows],
        "groups": [r.group for r in rows],
        "sha256": [r.sha256 for r in rows],
        "image_id": [r.image_id for r in rows],
        "extras": {c: [r.extras.get(c, "") for r in rows] for c in manifest.extra_columns},
    }


def _gather_features(batches: Any, dist: Dist, dev: torch.device, n: int, dim: int) -> np.ndarray:
    """Run this rank's batches, then gather every rank's rows in rank (= row) order on rank 0. A failure
    on any rank stops every rank (nobody waits forever in the gather); the failing rank names the file."""
    error: DermctlError | None = None
    local = np.zeros((0, dim), dtype=np.float32)
    try:
        local = np.concatenate([np.zeros((0, dim), dtype=np.float32), *batches], axis=0)
    except DermctlError as exc:
        error = exc
    comm = dev if dev.type == "cuda" else torch.device("cpu")
    failed = dist.all_reduce_sum([1.0 if error else 0.0], comm)[0]
    if error is not None:
        raise error
    if failed:
        raise DataError("embedding failed in another process (its error names the file)")
    rows = gather_rows(torch.from_numpy(local).to(comm), dist, shard_counts(n, dist.world_size))
    return rows.cpu().numpy() if rows is not None else local


def task_manifests(workspace: Workspace, tasks: Sequence[str] | None) -> list[Path]:
    """The named tasks' manifests, or every task manifest of the workspace."""
    if tasks:
        return [find_task(workspace.manifests, t) for t in tasks]
    if not workspace.manifests.is_dir():
        raise DataError(f"{workspace.manifests}: no manifests folder (run `dermctl ingest` first)")
    found = [p for p in find_manifests(workspace.manifests) if read_manifest(p).is_task]
    if not found:
        raise DataError(f"{workspace.manifests}: no task manifest (labelled, with a test split) to embed")
    return found


def embed(
    workspace: Workspace,
    model: str,
    tasks: Sequence[str] | None = None,
    backbone: str | None = None,
    weights: Path | None = None,
    feature_rule: str | None = None,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    num_workers: int = -1,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[EmbedOutcome]:
    """`dermctl embed`: resolve the model once, then embed every task (validated up front)."""
    manifests = task_manifests(workspace, tasks)
    resolve_device(device)
    try:
        loaded = resolve_model(model, workspace, backbone, weights)
    except UnavailableError as exc:
        if model == "imagenet":  # the report shows the row as unavailable, with the reason, never drops it
            name = backbone or DEFAULT_BACKBONE
            record_unavailable(
                workspace.results,
                f"imagenet-{name}",
                "imagenet",
                name,
                exc.message,
                [m.stem for m in manifests],
            )
        raise
    clear_unavailable(workspace.results, loaded.model_id)
    dist = dist_from_env(device)
    return [
        embed_manifest(
            loaded,
            m,
            workspace.embedding_path(loaded.model_id, workspace.task_key(m)),
            feature_rule,
            image_size,
            batch_size,
            device,
            num_workers,
            force,
            progress,
            dist,
            workspace,
        )
        for m in manifests
    ]
