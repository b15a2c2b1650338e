"""Fine-tuning: backbone and a linear head trained together on a labelled task (Gröger et al., Table 2,
"fine-tuned" rows), the best epoch on validation evaluated once on the test split.

Recipe (the task's documented choices):
    train views   RandomResizedCrop(image_size, scale=(0.5, 1)) - lesions are usually centred and a crop
                  below half the image often loses them - then horizontal and vertical flips, a random
                  rotation by a multiple of 90 degrees (skin photos have no canonical orientation) and mild
                  colour jitter (0.1 brightness/contrast/saturation, 0.02 hue).
    eval views    the evaluation transform of embed (`dermctl.models.transforms.eval_transform`): shorter side
                  to image_size / 0.875 (bicubic), centre crop image_size.
    features      the same features as embed / the linear probe (the backbone's feature rule): the last
                  average pool for CNNs, the class tokens of the last 4 blocks concatenated for ViTs
                  (Gröger et al. sec. 3.5, as DINO's linear evaluation).
    loss          cross-entropy, optionally class-balanced with weights n / (k * n_c) from train counts.
    optimiser     AdamW, backbone lr and head lr separate, no weight decay on biases and norms, per-iteration
                  cosine from the base lr to 0 over `epochs` (early stopping usually ends the run first).
    precision     bf16 autocast on CUDA, fp32 elsewhere.
    early stop    on val macro-F1 (default) or val loss, `patience` epochs without improvement.

Run folder `runs/finetune-<model_id>-<task>/`: config.json (config + provenance), metrics.csv (one row per
epoch), run.json (status, as pretraining's), last.pt (resumable: model, optimiser, history, early-stopping
state, the position in the epoch) and best.pt (the same state at the best val epoch), each with its
`.sha256` sidecar (`dermctl.runtime.checkpoint`: plain containers only, the hash checked before
`torch.load(weights_only=True)`; an altered file is refused, never loaded). Training runs on the one loop
of `dermctl.train.loop`, as pretraining does: interruption, divergence, resume, early stopping and
background checkpoint writes behave the same in both. Images are checked against the manifest's sha256
before training (`dermctl.data.verify`). Each epoch is seeded from (seed, epoch) so a resumed run repeats
the uninterrupted one exactly on the same device; checkpoints of dermctl <= 0.2 still resume.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dermctl.data.images import open_rgb
from dermctl.data.manifest import Manifest, Row, fill_hashes, find_task, read_manifest, validate_task
from dermctl.data.verify import verify_images
from dermctl.errors import ConflictError, DataError, UsageError
from dermctl.eval.metrics import by_group, classification_report, macro_f1
from dermctl.eval.models import resolve_model
from dermctl.models.backbone import BackboneMeta, extract_features, feature_dim
from dermctl.models.transforms import eval_transform, normaliser
from dermctl.provenance import provenance, sha256_file
from dermctl.results import build_result, write_result
from dermctl.runtime.checkpoint import load_checkpoint, sidecar_path
from dermctl.runtime.device import autocast, resolve_device, resolve_num_workers
from dermctl.runtime.distributed import Dist, dist_from_env, wrap_ddp
from dermctl.runtime.early_stopping import EarlyStopping
from dermctl.runtime.schedules import cosine_schedule
from dermctl.train.loop import EpochEnd, LoopTask, TrainingLoop, load_states, new_accumulators
from dermctl.workspace import RunFolder, Workspace, atomic_write_json

EARLY_STOP_MODES = ("f1", "loss")
CROP_SCALE = (0.5, 1.0)
CHECKPOINT_FORMAT = "dermctl-finetune-checkpoint/2"
VAL_FRACTION = 0.15  # the paper: non-test data split 85 % train / 15 % val at random
# Keys that change what is trained: a resumed run must agree on all of them.
_RESUME_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "head_lr",
    "weight_decay",
    "image_size",
    "class_balanced",
    "early_stop",
    "patience",
    "seed",
)
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_macro_f1", "lr", "head_lr", "best", "seconds")


@dataclass
class FinetuneConfig:
    """Options of one fine-tuning run (defaults: the study's fine-tuning setting, see module docstring)."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int | None = None  # None: the backbone's input size
    class_balanced: bool = False
    early_stop: str = "f1"
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    num_workers: int = -1  # -1: from the CPU count
    bootstrap: int = 1000

    def validate(self) -> None:
        checks = [
            ("--epochs", self.epochs, self.epochs >= 1, "an integer >= 1"),
            ("--batch-size", self.batch_size, self.batch_size >= 1, "an integer >= 1"),
            ("--lr", self.lr, self.lr > 0 and math.isfinite(self.lr), "a positive number"),
            (
                "--head-lr",
                self.head_lr,
                self.head_lr > 0 and math.isfinite(self.head_lr),
                "a positive number",
            ),
            ("--weight-decay", self.weight_decay, self.weight_decay >= 0, "a number >= 0"),
            ("--patience", self.patience, self.patience >= 1, "an integer >= 1"),
            ("--early-stop", self.early_stop, self.early_stop in EARLY_STOP_MODES, "f1 or loss"),
            ("--workers", self.num_workers, self.num_workers >= -1, "an integer >= 0 (or -1 for auto)"),
            ("--bootstrap", self.bootstrap, self.bootstrap >= 0, "an integer >= 0"),
        ]
        if self.image_size is not None:
            checks.append(("--image-size", self.image_size, self.image_size >= 16, "an integer >= 16"))
        for option, value, ok, expected in checks:
            if not ok:
                raise UsageError(f"{option}: {value!r} is not valid (expected {expected})")


@dataclass
class FinetuneOutcome:
    """What a finished run produced."""

    result_path: Path
    run_dir: Path
    payload: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- small, testable pieces


def class_weights(labels: Sequence[int], n_classes: int) -> torch.Tensor:
    """Class-balanced cross-entropy weights, inversely proportional to the train frequency:
    w_c = n / (k * n_c) (so a balanced set gets all ones). A class absent from `labels` gets 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    n = counts.sum()
    w = np.zeros(n_classes, dtype=np.float64)
    present = counts > 0
    w[present] = n / (n_classes * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def split_train_val(
    rows: list[Row], seed: int, fraction: float = VAL_FRACTION
) -> tuple[list[Row], list[Row]]:
    """Seeded random val split of the non-test rows, stratified by label and grouped (a group never
    straddles train and val). Used only when the manifest has no val rows."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    group_of: dict[int, str] = {}
    for i, r in enumerate(rows):
        key = r.group or f"\0row{i}"
        group_of[i] = key
        by_label.setdefault(r.label, [])
        if key not in by_label[r.label]:
            by_label[r.label].append(key)
    val_groups: set[str] = set()
    for label in sorted(by_label):
        groups = sorted(by_label[label])
        if len(groups) < 2:
            continue  # keep the only group of a class in train
        n_val = max(1, round(len(groups) * fraction))
        picked = rng.permutation(len(groups))[:n_val]
        val_groups.update(groups[j] for j in picked)
    train = [r for i, r in enumerate(rows) if group_of[i] not in val_groups]
    val = [r for i, r in enumerate(rows) if group_of[i] in val_groups]
    return train, val


def build_transforms(
    meta: BackboneMeta, image_size: int
) -> tuple[Callable[[Any], torch.Tensor], Callable[[Any], torch.Tensor]]:
    """(train transform, eval transform): PIL RGB image -> normalised tensor with the backbone's channels.
    The eval transform is the one `embed` uses (dermctl.models.transforms)."""
    from torchvision import transforms as T

    finish = normaliser(meta.mean, meta.std, meta.channels)
    train = T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=CROP_SCALE, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            T.ColorJitter(0.1, 0.1, 0.1, 0.02),
            T.ToTensor(),
            T.Lambda(finish),
        ]
    )
    return train, eval_transform(image_size, meta.mean, meta.std, meta.channels)


class ManifestImages(Dataset):
    """Rows of a manifest as (image tensor, integer label)."""

    def __init__(
        self,
        manifest: Manifest,
        rows: list[Row],
        classes: list[str],
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.manifest, self.rows, self.transform = manifest, rows, transform
        self.index = {c: i for i, c in enumerate(classes)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.rows[i]
        path = self.manifest.resolve(row)
        try:
            image = open_rgb(path)
        except Exception as exc:  # PIL raises many types for broken files
            raise DataError(f"{path}: cannot decode image listed in {self.manifest.path}: {exc}") from exc
        return self.transform(image), self.index[row.label]

    def labels(self) -> list[int]:
        return [self.index[r.label] for r in self.rows]


class FinetuneModel(nn.Module):
    """Backbone + linear head (`backbone.*`, `head.*` in the state dict) on the backbone's feature rule, so
    fine-tuning starts from the very features embed and the probe use (cls4 for ViTs: 4 x dim inputs)."""

    def __init__(self, backbone: nn.Module, n_classes: int, meta: BackboneMeta) -> None:
        super().__init__()
        self.backbone, self.feature_rule = backbone, meta.feature_rule
        for p in backbone.parameters():
            p.requires_grad_(True)  # resolve_model hands out frozen backbones; fine-tuning trains them
        dim = feature_dim(backbone, meta.feature_rule, meta.input_size, meta.in_chans)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(extract_features(self.backbone, x, self.feature_rule))


# --------------------------------------------------------------------------- the run


def run_finetune(
    workspace: Workspace,
    task: str,
    model: str,
    config: FinetuneConfig,
    *,
    backbone: str | None = None,
    weights: str | None = None,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> FinetuneOutcome:
    """Resolve the task manifest and the model spec, then fine-tune (the `dermctl finetune` entry point)."""
    config.validate()
    manifest = read_manifest(find_task(workspace.manifests, task))
    validate_task(manifest)
    loaded = resolve_model(model, workspace, backbone=backbone, weights=Path(weights) if weights else None)
    dist = dist_from_env(config.device)
    # One process per run folder (as pretrain): a second one is told the PID instead of mixing checkpoints.
    folder = RunFolder.finetuning(workspace.runs / f"finetune-{loaded.model_id}-{manifest.name}")
    lock = folder.lock("dermctl finetune") if dist.is_main else contextlib.nullcontext()
    with lock:
        return finetune(workspace, manifest, loaded, config, resume=resume, force=force, log=log, dist=dist)


def finetune(
    workspace: Workspace,
    manifest: Manifest,
    loaded: Any,
    config: FinetuneConfig,
    *,
    resume: bool = False,
    force: bool = False,
    log: Callable[[str], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    dist: Dist | None = None,
) -> FinetuneOutcome:
    """Fine-tune `loaded.backbone` (a dermctl.eval.models.LoadedModel) with a linear head on `manifest`.

    Checks everything that can fail (options, splits, existing outputs, resume config) before training.
    `on_epoch_end(epoch, row)` is called after each epoch (its checkpoint is being written in the
    background and is on disk before any error, including one raised by the callback, leaves `finetune`).

    Under torchrun the model is wrapped in DistributedDataParallel, each process trains on its
    DistributedSampler share (`batch_size` per process, re-shuffled each epoch), and rank 0 alone
    validates (its value decides early stopping on every process), writes files and evaluates the test
    split."""
    dist = dist or dist_from_env(config.device)
    say = (log or (lambda _m: None)) if dist.is_main else (lambda _m: None)
    config.validate()
    validate_task(manifest)
    # Before any work (a DataLoader worker's error would come back as a traceback): every image exists
    # and is the one the manifest lists.
    verify_images(manifest, workspace.manifests)
    task = manifest.name
    model_id = str(loaded.model_id)
    meta: BackboneMeta = loaded.meta
    image_size = int(config.image_size or meta.input_size)
    result_path = workspace.result_path("finetune", model_id, task)
    folder = RunFolder.finetuning(workspace.runs / f"finetune-{model_id}-{task}")
    run_dir, last_path, best_path = folder.root, folder.last, folder.best

    if result_path.exists() and not (force or resume):
        raise ConflictError(f"{result_path} exists; pass --force to redo the run or --resume to continue it")
    if last_path.exists() and not (force or resume):
        raise ConflictError(
            f"{last_path} exists (an earlier run); pass --resume to continue it or --force to restart"
        )

    classes = manifest.classes
    n_classes = len(classes)
    test_rows = manifest.split_rows("test")
    val_rows = manifest.split_rows("val")
    train_rows = manifest.split_rows("train")
    val_source = "manifest"
    if not val_rows:
        train_rows, val_rows = split_train_val(train_rows, config.seed)
        val_source = f"random {int(VAL_FRACTION * 100)} % of train (seed {config.seed}, grouped, stratified)"
    if not val_rows:
        raise DataError(f"{manifest.path}: no val split and too few train images to hold some out")
    missing = sorted(set(classes) - {r.label for r in train_rows})
    if missing:
        raise DataError(
            f"{manifest.path}: after holding out val, train has no image of class {', '.join(missing)}"
        )

    device = resolve_device(config.device, dist.local_rank if dist.enabled else None)
    workers = resolve_num_workers(config.num_workers)
    saved_config = {k: v for k, v in asdict(config).items()}
    saved_config.update(
        image_size=image_size,
        task=task,
        model=model_id,
        init=str(loaded.init),
        backbone=meta.timm_name,
        classes=classes,
        val_source=val_source,
        crop_scale=list(CROP_SCALE),
        features=meta.feature_rule,
        backbone_sha256=str(loaded.checkpoint_sha256 or ""),
        manifest_sha256=sha256_file(manifest.path) if manifest.path else "",
    )

    state: dict[str, Any] | None = None
    if resume and last_path.exists():
        state = _upgrade_checkpoint(_load_checkpoint(last_path))
        _check_resume(last_path, state.get("config", {}), saved_config)
        say(
            f"resuming {run_dir} after epoch {int(state['epoch'])}"
            + (f", batch {state['batch']}" if state["batch"] else "")
        )
    elif resume:
        say(f"no checkpoint in {run_dir}: starting from scratch")

    train_tf, eval_tf = build_transforms(meta, image_size)
    train_set = ManifestImages(manifest, train_rows, classes, train_tf)
    val_set = ManifestImages(manifest, val_rows, classes, eval_tf)
    test_set = ManifestImages(manifest, test_rows, classes, eval_tf)

    torch.manual_seed(config.seed)  # the head's initial weights
    net = FinetuneModel(loaded.backbone, n_classes, meta).to(device)
    weight = class_weights(train_set.labels(), n_classes).to(device) if config.class_balanced else None
    criterion = nn.CrossEntropyLoss(weight=weight)
    job = _FinetuneTask(
        net, wrap_ddp(net, dist, device), criterion, train_set, val_set, config, device, dist, workers,
        run_dir.name, saved_config,
    )  # fmt: skip

    def epoch_done(epoch: int, row: dict[str, Any], improved: bool) -> None:
        if not dist.is_main:
            return
        say(
            f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f}, "
            f"val loss {row['val_loss']:.4f}, val macro-F1 {row['val_macro_f1']:.4f}{' (best)' if improved else ''}"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    loop = TrainingLoop(
        job,
        epochs=config.epochs,
        stopper=EarlyStopping(config.patience, mode="max" if config.early_stop == "f1" else "min"),
        folder=folder,
        dist=dist,
        device=device,
        log=say,
        on_epoch_end=epoch_done,
    )
    if state is not None:
        loop.restore(state, last_path)
    elif dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # --force: an earlier run's checkpoints and status must not mix with this one
        for stale in (last_path, best_path, sidecar_path(last_path), sidecar_path(best_path), folder.status):
            stale.unlink(missing_ok=True)

    inputs = {"manifest": saved_config["manifest_sha256"]} if manifest.path else {}
    if loaded.checkpoint_sha256:
        inputs["backbone"] = str(loaded.checkpoint_sha256)
    if dist.is_main:
        record = {"config": saved_config, "provenance": provenance(saved_config, inputs)}
        atomic_write_json(folder.config, record | {"world_size": dist.world_size})

    loop.write_status("running")
    try:
        status = loop.run()
        loop.finish()  # best.pt and last.pt on disk before the test split is scored
        if not dist.is_main:
            dist.barrier()  # rank 0 evaluates the test split and writes the result
            return FinetuneOutcome(result_path, run_dir, {}, 0, loop.epoch, False)
        history = loop.history
        stopped_early = loop.stopper.should_stop and len(history) < config.epochs
        if not best_path.exists():
            raise DataError(f"{best_path}: missing; the run has no best checkpoint (restart with --force)")
        best = _load_checkpoint(best_path)
        best_epoch = _epochs_done(best)
        net.load_state_dict(best["model"])
        say(f"evaluating epoch {best_epoch} (best on val) on {len(test_set)} test images")
        test = _evaluate(net, test_set, config.batch_size, workers, device, criterion)
        payload = _result_payload(
            manifest, test_rows, loaded, classes, test, config, saved_config, inputs, best_path
        )
        payload["best_epoch"] = best_epoch
        payload["epochs_run"] = len(history)
        payload["stopped_early"] = stopped_early
        payload["run_dir"] = str(run_dir)
        write_result(result_path, payload, force=force or resume)
        loop.write_status(status)
    except BaseException as exc:
        loop.failed(exc)
        raise
    dist.barrier()
    return FinetuneOutcome(
        result_path=result_path,
        run_dir=run_dir,
        payload=payload,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        history=history,
    )


class _FinetuneTask(LoopTask):
    """Fine-tuning as a `LoopTask`: cross-entropy on the train split, validation on val each epoch."""

    divergence_hint = "lower --lr / --head-lr, then --resume"

    def __init__(
        self,
        net: FinetuneModel,
        model: nn.Module,
        criterion: nn.Module,
        train_set: ManifestImages,
        val_set: ManifestImages,
        config: FinetuneConfig,
        device: torch.device,
        dist: Dist,
        workers: int,
        name: str,
        saved_config: dict[str, Any],
    ) -> None:
        self.net, self.model, self.criterion = net, model, criterion  # model: net, DDP-wrapped under torchrun
        self.train_set, self.val_set, self.config = train_set, val_set, config
        self.device, self.dist, self.workers, self.name = device, dist, workers, name
        self.optimizer = _optimizer(net, config)
        self.n_classes = len(train_set.index)
        self.monitored = "val macro-F1" if config.early_stop == "f1" else "val loss"
        self.sampler = (
            torch.utils.data.DistributedSampler(
                train_set, dist.world_size, dist.rank, shuffle=True, seed=config.seed, drop_last=False
            )
            if dist.enabled
            else None
        )
        n = len(self.sampler) if self.sampler is not None else len(train_set)
        self.ipe = math.ceil(n / config.batch_size)
        self.lr_factor = cosine_schedule(1.0, 0.0, config.epochs, self.ipe)
        self.t0 = time.perf_counter()
        self.saved_config = saved_config  # recorded in every checkpoint: a resume must agree with it

    def batches_per_epoch(self) -> int:
        return self.ipe

    def epoch_batches(self, epoch: int, skip: int) -> Iterable[Any]:
        config = self.config
        self.t0 = time.perf_counter()
        _seed_epoch(config.seed + 7919 * self.dist.rank, epoch)  # each process its own augmentations
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            loader = DataLoader(
                self.train_set, batch_size=config.batch_size, sampler=self.sampler, num_workers=self.workers
            )
        else:
            loader = _loader(
                self.train_set,
                config.batch_size,
                self.workers,
                shuffle=True,
                seed=config.seed * 100_003 + epoch,
            )
        self.net.train()
        # batches trained before an interruption are loaded, not trained on: the augmentation RNG advances
        # exactly as it did
        return itertools.islice(loader, skip, None)

    def forward(self, batch: Any, epoch: int, b: int) -> tuple[torch.Tensor, dict[str, float], int]:
        x, y = batch
        factor = float(self.lr_factor[epoch * self.ipe + b])
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with _autocast(self.device):
            loss = self.criterion(self.model(x).float(), y)
        return loss, {}, len(y)

    def optimize(self, loss: torch.Tensor, epoch: int, b: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def end_epoch(self, epoch: int, acc: dict[str, Any]) -> EpochEnd:
        if not self.dist.is_main:  # rank 0 validates and decides; the others follow its decision
            return EpochEnd(None, {})
        val = _evaluate(
            self.net, self.val_set, self.config.batch_size, self.workers, self.device, self.criterion
        )
        val_f1 = float(macro_f1(val["y_true"], val["y_pred"], self.n_classes))
        row = {
            "epoch": epoch + 1,
            "train_loss": acc["loss_sum"] / max(acc["n"], 1),
            "val_loss": val["loss"],
            "val_macro_f1": val_f1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "head_lr": self.optimizer.param_groups[-1]["lr"],
            "best": 0,  # the loop marks the new best
            "seconds": round(time.perf_counter() - self.t0, 3),
        }
        return EpochEnd(val_f1 if self.config.early_stop == "f1" else val["loss"], row)

    def metrics_columns(self, history: list[dict[str, Any]]) -> list[str]:
        return list(METRICS_COLUMNS)

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "config": self.saved_config,
        }

    def restore(self, state: dict[str, Any], path: Path) -> bool:
        load_states(path, state, model=self.net, optimizer=self.optimizer)
        return True

    def status_record(self, status: str, message: str, loop: TrainingLoop) -> dict[str, Any]:
        best = loop.stopper.best
        return {
            "name": self.name,
            "task": self.saved_config.get("task"),
            "model": self.saved_config.get("model"),
            "status": status,
            "epochs": self.config.epochs,
            "epochs_run": len(loop.history),
            "iterations": loop.iteration,
            "best_epoch": loop.stopper.best_epoch + 1,
            "early_stop": self.config.early_stop,
            "best_val": best if math.isfinite(best) else None,
            "message": message,
        }


def _upgrade_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """A fine-tuning checkpoint of dermctl <= 0.2 (no `format`: `epoch` = the last completed epoch, 0-based;
    `early_stop`; `partial` = [loss sum, images]) in the loop's terms, so such runs still resume."""
    if "format" in state:
        return state
    batch = int(state.get("batch", 0))
    total, count = state.get("partial", (0.0, 0.0))
    partial = {**new_accumulators(), "loss_sum": float(total), "n": int(count)} if batch else None
    return {
        **state,
        "epoch": int(state["epoch"]) + 1,
        "batch": batch,
        "partial": partial,
        "early_stopping": state["early_stop"],
    }


def _epochs_done(state: dict[str, Any]) -> int:
    """The 1-based epoch whose weights a checkpoint holds (dermctl <= 0.2's best.pt counted from 0)."""
    return int(state["epoch"]) + (0 if "format" in state else 1)


def _result_payload(
    manifest: Manifest,
    test_rows: list[Row],
    loaded: Any,
    classes: list[str],
    test: dict[str, Any],
    config: FinetuneConfig,
    saved_config: dict[str, Any],
    inputs: dict[str, str],
    best_path: Path,
) -> dict[str, Any]:
    fill_hashes(Manifest(name=manifest.name, rows=test_rows, path=manifest.path))
    n_classes = len(classes)
    metrics = classification_report(
        test["y_true"],
        test["y_pred"],
        n_classes,
        scores=test["scores"],
        class_names=classes,
        bootstrap=config.bootstrap,
        seed=config.seed,
    )
    inputs = dict(inputs, checkpoint=sha256_file(best_path))
    per_skin_type = None
    if "skin_type" in manifest.extra_columns:
        groups = [r.extras.get("skin_type", "") or "unknown" for r in test_rows]
        per_skin_type = by_group(test["y_true"], test["y_pred"], groups, n_classes, scores=test["scores"])
    payload = build_result(
        "finetune",
        str(loaded.model_id),
        str(loaded.init),
        loaded.meta.timm_name,
        manifest.name,
        classes,
        [r.sha256 for r in test_rows],
        metrics,
        saved_config,
        inputs,
        per_skin_type=per_skin_type,
    )
    payload["data"] = {
        "task": manifest.name,
        "manifest": Path(manifest.path).name if manifest.path else manifest.name,
        "class_counts": {
            split: {c: sum(1 for r in manifest.rows if r.split == split and r.label == c) for c in classes}
            for split in ("train", "val", "test")
        },
    }
    payload["predictions"] = {
        "sha256": [r.sha256 for r in test_rows],
        "y_true": [int(v) for v in test["y_true"]],
        "y_pred": [int(v) for v in test["y_pred"]],
    }
    return payload


# --------------------------------------------------------------------------- helpers


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 on CUDA, fp32 on the CPU (fine-tuning has no precision option)."""
    return autocast(device, torch.bfloat16 if device.type == "cuda" else None)


def _seed_epoch(seed: int, epoch: int) -> None:
    # Augmentations draw from the global RNGs in the main process (num_workers=0); seeding per epoch makes
    # a resumed run draw exactly what the uninterrupted one drew.
    import random

    s = (seed * 1_000_003 + epoch) % (2**31)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s)


def _loader(dataset: Dataset, batch_size: int, workers: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def _optimizer(net: FinetuneModel, config: FinetuneConfig) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = []
    for prefix, lr in (("backbone.", config.lr), ("head.", config.head_lr)):
        decay, no_decay = [], []
        for name, p in net.named_parameters():
            if not name.startswith(prefix) or not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)  # biases and norm weights: no decay
        groups.append({"params": decay, "weight_decay": config.weight_decay, "lr": lr, "base_lr": lr})
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW([g for g in groups if g["params"]])


@torch.no_grad()
def _evaluate(
    net: nn.Module,
    dataset: ManifestImages,
    batch_size: int,
    workers: int,
    device: torch.device,
    criterion: nn.Module,
) -> dict[str, Any]:
    net.eval()
    ys, preds, scores = [], [], []
    total, count = 0.0, 0
    with _autocast(device):
        for x, y in _loader(dataset, batch_size, workers, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = net(x).float()
            total += float(criterion(logits, y)) * len(y)
            count += len(y)
            ys.append(y.cpu())
            preds.append(logits.argmax(1).cpu())
            scores.append(torch.softmax(logits, dim=1).cpu())
    return {
        "y_true": torch.cat(ys).numpy(),
        "y_pred": torch.cat(preds).numpy(),
        "scores": torch.cat(scores).numpy(),
        "loss": total / max(count, 1),
    }


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)  # the sidecar hash is checked first: an altered file is never loaded
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise DataError(f"{path}: not a dermctl fine-tuning checkpoint (expected keys 'model' and 'epoch')")
    return state


def _check_resume(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    for key in (*_RESUME_KEYS, "model", "task", "classes", "backbone_sha256", "manifest_sha256"):
        if key in old and old[key] != new.get(key):
            raise ConflictError(
                f"{path}: was trained with {key}={old[key]!r}, now {key}={new.get(key)!r}; "
                "use the same options to --resume, or --force to restart"
            )
