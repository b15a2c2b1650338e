"""Pretraining (`dermctl pretrain`): every method, as a task of the one training loop
(`dermctl.train.loop`, which fine-tuning runs on too).

The step follows the official DINO code (per-iteration lr / weight-decay / EMA-momentum schedules as
precomputed arrays; lr scaled by global batch / 256 where the method asks for it) with the study's
protocol from Gröger et al.: validation loss every epoch and early stopping after `patience` (5) epochs
without improvement. The exported backbone is the last epoch's (`export_epoch = "last"`, as the authors'
released weights; "best": the lowest val loss).

Run folder `runs/<name>/` (see docs/pretrain.md):
    config.json            resolved config + provenance (command, versions, data manifests' hashes, excluded)
    metrics.csv            one row per epoch (rewritten atomically each epoch)
    run.json               status, best epoch, epochs run
    checkpoints/last.pt    full training state (+ .sha256), each epoch and on interruption
    checkpoints/best.pt    the same state at the best val loss
    backbone.safetensors   exported backbone of the exported epoch (+ backbone.json)
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dermctl.data.manifest import find_task
from dermctl.errors import (
    ConflictError,
    DataError,
    TrainingError,
    UnavailableError,
    UsageError,
)
from dermctl.methods.base import PretrainMethod, StepContext
from dermctl.methods.registry import get_method
from dermctl.models.backbone import check_backbone_name, check_init, export_backbone
from dermctl.provenance import provenance
from dermctl.runtime.checkpoint import load_checkpoint, snapshot
from dermctl.runtime.device import (
    autocast,
    enable_tf32,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
)
from dermctl.runtime.distributed import (
    Dist,
    convert_sync_batchnorm,
    dist_from_env,
    dump_state_hash,
    per_process_batch,
    use_sync_bn,
    wrap_ddp,
)
from dermctl.runtime.early_stopping import EarlyStopping
from dermctl.runtime.schedules import constant_schedule, cosine_schedule
from dermctl.runtime.signals import RunInterrupted
from dermctl.train.clipping import clip_gradients
from dermctl.train.config import resume_differences, validate_config
from dermctl.train.data import (
    VAL_EPOCH,
    ImageDataset,
    check_files,
    close_loaders,
    epoch_batches,
    epoch_order,
    load_pretrain_data,
    make_loader,
    pretrain_datasets,
)
from dermctl.train.health import EpochLogs, KnnMonitor
from dermctl.train.loop import EpochEnd, LoopTask, StepUpdate, TrainingLoop, load_states
from dermctl.workspace import (
    DONE_STATUSES,
    RunFolder,
    Workspace,
    atomic_write_json,
    read_json,
)

BASE_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "weight_decay", "momentum")
TAIL_COLUMNS = ("monitor_knn_f1", "collapsed", "seconds", "images_per_s", "data_wait_share")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class RunSummary:
    """The outcome of `pretrain`."""

    name: str
    run_dir: Path
    status: str
    epochs_run: int
    best_epoch: int  # 1-based; 0 when no epoch was validated
    best_val_loss: float | None
    train_images: int
    val_images: int
    excluded: int
    backbone: Path | None
    warnings: list[str] = field(default_factory=list)
    exported_epoch: int = 0  # 1-based epoch whose weights `backbone` holds (config export_epoch)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        d["backbone"] = str(self.backbone) if self.backbone else None
        return d


VAL_CACHE_BYTES = 256 * 2**20  # a val set up to this size is decoded and augmented once per run


# -- building blocks ---------------------------------------------------------------------------


def default_run_name(cfg: dict[str, Any]) -> str:
    return f"{cfg['method']}-{cfg['backbone']}".replace("/", "_")


def build_optimizer(
    method: PretrainMethod, cfg: dict[str, Any], device: torch.device
) -> torch.optim.Optimizer:
    """sgd (with `sgd_momentum`) / adam / adamw over the method's parameter groups; the engine sets each
    group's lr and weight decay every iteration (weight decay only where `apply_wd`)."""
    groups = []
    for g in method.param_groups():
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            groups.append(
                {
                    "params": params,
                    "apply_wd": bool(g.get("apply_wd", True)),
                    "lr_scale": float(g.get("lr_scale", 1.0)),
                }
            )
    if not groups:
        raise TrainingError(f"method {cfg['method']} has no trainable parameters")
    on_cuda = device.type == "cuda"
    name = cfg["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["sgd_momentum"], foreach=on_cuda or None)
    kwargs: dict[str, Any] = {"fused": True} if on_cuda else {}
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], **kwargs)
    raise UsageError(f"config key 'optimizer' = {name!r}: expected one of sgd, adam, adamw")


def build_schedules(cfg: dict[str, Any], iters_per_epoch: int, global_batch: int) -> dict[str, np.ndarray]:
    """Per-iteration lr, weight decay and EMA momentum (DINO's `utils.cosine_scheduler` convention)."""
    epochs = cfg["epochs"]
    base_lr = cfg["lr"] * (global_batch / 256 if cfg["lr_scaling"] == "linear256" else 1.0)
    if cfg["lr_schedule"] == "cosine":
        lr = cosine_schedule(base_lr, cfg["min_lr"], epochs, iters_per_epoch, cfg["warmup_epochs"])
    else:
        lr = constant_schedule(base_lr, epochs, iters_per_epoch, cfg["warmup_epochs"])
    wd_end = cfg["weight_decay_end"]
    if wd_end is None:
        wd = np.full(epochs * iters_per_epoch, float(cfg["weight_decay"]))
    else:
        wd = cosine_schedule(cfg["weight_decay"], wd_end, epochs, iters_per_epoch)
    momentum = cosine_schedule(cfg["momentum_teacher"], 1.0, epochs, iters_per_epoch)
    return {"lr": lr, "weight_decay": wd, "momentum": momentum}


def _rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in mt), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in a batch (dicts, lists and tuples of tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return _batch_len(next(iter(batch.values())))
    if isinstance(batch, list | tuple):
        return _batch_len(batch[0])
    return 1


# -- the engine --------------------------------------------------------------------------------


@dataclass
class _RunParts:
    """What one run trains with, built by `pretrain()` before the trainer exists."""

    method: PretrainMethod
    model: torch.nn.Module  # the method, wrapped in DistributedDataParallel when world size > 1
    optimizer: torch.optim.Optimizer
    train_ds: ImageDataset
    val_ds: ImageDataset
    batch_size: int  # per process
    ipe: int  # iterations per epoch
    workers: int  # loader processes
    sched: dict[str, np.ndarray]  # engine schedules (lr, weight decay, momentum), per iteration
    method_sched: dict[str, np.ndarray]  # the method's own schedules, per iteration
    monitor: KnnMonitor | None


class _PretrainTask(LoopTask):
    """Pretraining as a `LoopTask`: the method's step, its schedules, validation and the health checks."""

    monitored = "val loss"
    divergence_hint = "lower lr or set clip_grad in a new run, or --resume"

    def __init__(
        self,
        cfg: dict[str, Any],
        name: str,
        device: torch.device,
        dist: Dist,
        parts: _RunParts,
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.name, self.device, self.dist, self.log = cfg, name, device, dist, log
        self.method, self.model, self.optimizer = parts.method, parts.model, parts.optimizer
        self.train_ds, self.val_ds = parts.train_ds, parts.val_ds
        self.batch_size, self.ipe, self.workers = parts.batch_size, parts.ipe, parts.workers
        self.sched, self.method_sched, self.monitor = parts.sched, parts.method_sched, parts.monitor
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.amp_dtype, use_scaler = resolve_precision(cfg["precision"], device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.collapsed_epochs: list[int] = []
        self.warnings: list[str] = []
        self.val_cache: list[Any] | None = None  # the val batches, when they fit in VAL_CACHE_BYTES
        self.exported_epoch = 0
        self.ctx: StepContext | None = None  # the step in progress

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": "dermctl-pretrain-checkpoint/1",
            "method": self.cfg["method"],
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "collapsed_epochs": list(self.collapsed_epochs),
            "world_size": self.dist.world_size,
            "global_batch": self.batch_size * self.dist.world_size,
            "rng": _rng_state(),
        }

    def restore(self, state: dict[str, Any], path: Path) -> bool:
        if state.get("method") != self.cfg["method"]:
            raise DataError(
                f"{path}: checkpoint of method {state.get('method')!r}, not {self.cfg['method']!r}"
            )
        load_states(path, state, model=self.method, optimizer=self.optimizer)
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.collapsed_epochs = list(state["collapsed_epochs"])
        _set_rng_state(state["rng"])
        global_batch = self.batch_size * self.dist.world_size
        saved_batch = int(state.get("global_batch", global_batch))
        if saved_batch != global_batch and int(state["batch"]):
            # The b-th global batch of an epoch depends only on (seed, epoch, global batch), not on the
            # world size; with another global batch the partial epoch cannot be continued: redo it.
            self.log(
                f"checkpoint taken with a global batch of {saved_batch}, resuming with {global_batch}: "
                f"epoch {int(state['epoch']) + 1} restarts from its first batch"
            )
            return False
        return True

    def status_record(self, status: str, message: str, loop: TrainingLoop) -> dict[str, Any]:
        best = loop.stopper.best
        return {
            "name": self.name,
            "method": self.cfg["method"],
            "status": status,
            "epochs": self.cfg["epochs"],
            "epochs_run": len(loop.history),
            "iterations": loop.iteration,
            "best_epoch": loop.stopper.best_epoch + 1,
            "best_val_loss": best if math.isfinite(best) else None,
            "collapsed_epochs": [e + 1 for e in self.collapsed_epochs],
            "message": message,
        }

    def metrics_columns(self, history: list[dict[str, Any]]) -> list[str]:
        middle: list[str] = []
        for row in history:
            for k in row:
                if k not in BASE_COLUMNS and k not in TAIL_COLUMNS and k not in middle:
                    middle.append(k)
        return [*BASE_COLUMNS, *middle, *TAIL_COLUMNS]

    # -- one step ------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.amp_dtype)

    def batches_per_epoch(self) -> int:
        return self.ipe

    def epoch_batches(self, epoch: int, skip: int) -> Iterable[Any]:
        order = self.dist.shard(epoch_order(len(self.train_ds), self.cfg["seed"], epoch))
        batches = epoch_batches(order, self.batch_size, epoch, drop_last=True, skip=skip)
        gen = torch.Generator().manual_seed(
            self.cfg["seed"] * 1000003 + epoch
        )  # keeps the global RNG untouched
        loader = make_loader(self.train_ds, batches, self.workers, self.device.type == "cuda", gen)
        self.method.train()
        return loader

    def forward(self, batch: Any, epoch: int, b: int) -> tuple[torch.Tensor, dict[str, float], int]:
        it = epoch * self.ipe + b
        ctx = self.ctx = StepContext(
            it=it,
            epoch=epoch,
            training=True,
            lr=float(self.sched["lr"][it]),
            weight_decay=float(self.sched["weight_decay"][it]),
            momentum=float(self.sched["momentum"][it]),
        )
        for g in self.optimizer.param_groups:
            g["lr"] = ctx.lr * g["lr_scale"]
            g["weight_decay"] = ctx.weight_decay if g["apply_wd"] else 0.0
        batch = _to_device(batch, self.device)
        with torch.no_grad():  # batched photometric views on the device (a no-op unless gpu_augment)
            batch = self.method.device_augment(batch, ctx)
        with self.autocast():
            loss, step_logs = self.model(batch, ctx)  # DDP averages gradients in backward
        return loss, step_logs, _batch_len(batch)

    def optimize(self, loss: torch.Tensor, epoch: int, b: int) -> None:
        ctx = self.ctx
        assert ctx is not None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg["clip_grad"] > 0:  # clip first, then the method's hook (DINO cancels last-layer grads)
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, self.cfg["clip_grad"], self.cfg.get("clip_mode", "global"))
        self.method.before_optimizer_step(ctx)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step(ctx)

    # -- epoch end -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, epoch: int) -> float:
        """Mean val loss with fixed views and a fixed RNG so epochs are comparable; no state changes."""
        self.method.eval()
        # Sharded like training (padded to equal lengths, so every rank runs the same collectives).
        # The val views are the same every epoch (fixed seed and batches): a val set that fits in
        # VAL_CACHE_BYTES is loaded once and replayed from memory (copies, as steps may work in place).
        if self.val_cache is not None:
            source: Any = (snapshot(b) for b in self.val_cache)
        else:
            order = self.dist.shard(list(range(len(self.val_ds))))
            batches = epoch_batches(order, self.batch_size, VAL_EPOCH, drop_last=False)
            gen = torch.Generator().manual_seed(self.cfg["seed"])
            # One loader process decodes no faster than this one, which has nothing else to do during
            # validation: with at most one, the val set is read here, without a process to start.
            workers = self.workers if self.workers > 1 else 0
            source = make_loader(self.val_ds, batches, workers, self.device.type == "cuda", gen)
        keep: list[Any] | None = [] if self.val_cache is None else None
        kept_bytes = 0
        total, n = 0.0, 0
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg["seed"] + 7919)
            random.seed(self.cfg["seed"] + 7919)
            np.random.seed(self.cfg["seed"] + 7919)
            for batch in source:
                if keep is not None:
                    kept_bytes += _nbytes(batch)
                    if kept_bytes <= VAL_CACHE_BYTES:
                        keep.append(snapshot(batch))
                    else:
                        keep = None
                ctx = StepContext(
                    it=epoch * self.ipe, epoch=epoch, training=False, lr=0.0, weight_decay=0.0, momentum=1.0
                )
                batch = _to_device(batch, self.device)
                with torch.no_grad():
                    batch = self.method.device_augment(batch, ctx)
                with self.autocast():
                    loss, _ = self.method.training_step(batch, ctx)
                k = _batch_len(batch)
                total += float(loss.float().item()) * k
                n += k
        random.setstate(py_state)
        np.random.set_state(np_state)
        if keep is not None:
            self.val_cache = keep
            close_loaders(self.val_ds)  # its workers are not needed again
        self.method.train()
        total, n = self.dist.all_reduce_sum([total, n], self.device)
        return total / max(n, 1)

    def monitor_score(self) -> float | None:
        if self.monitor is None or not self.dist.is_main:
            return None
        module, meta = self.method.export()
        with torch.random.fork_rng(devices=[]), self.autocast():
            return self.monitor.score(module, meta, self.device)

    def end_epoch(self, epoch: int, acc: dict[str, Any]) -> EpochEnd:
        cfg = self.cfg
        validated = (epoch + 1) % cfg["val_every"] == 0 or epoch + 1 == cfg["epochs"]
        val_loss = self.validate(epoch) if validated else math.nan
        means = EpochLogs()
        means.load_state_dict(acc["logs"])
        epoch_logs = means.means()
        reason = self.method.collapse_reason(epoch_logs)
        if reason:
            self.collapsed_epochs.append(epoch)
            self.warnings.append(f"epoch {epoch + 1}: representation collapse: {reason}")
            self.log(f"[yellow]warning:[/] epoch {epoch + 1}: representation collapse: {reason}")
        knn = None
        if self.monitor is not None and (
            (epoch + 1) % cfg["monitor_every"] == 0 or epoch + 1 == cfg["epochs"]
        ):
            knn = self.monitor_score()
        it_last = min((epoch + 1) * self.ipe - 1, len(self.sched["lr"]) - 1)
        secs = max(acc["seconds"], 1e-9)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": acc["loss_sum"] / max(acc["n"], 1),
            "val_loss": val_loss,
            "lr": float(self.sched["lr"][it_last]),
            "weight_decay": float(self.sched["weight_decay"][it_last]),
            "momentum": float(self.sched["momentum"][it_last]),
        }
        for k, arr in self.method_sched.items():
            row[k if k not in row else f"sched_{k}"] = float(arr[min(it_last, len(arr) - 1)])
        for k, v in epoch_logs.items():
            row[k if k not in row and k not in TAIL_COLUMNS else f"log_{k}"] = v
        row.update(
            monitor_knn_f1=knn,
            collapsed=bool(reason),
            seconds=acc["seconds"],
            images_per_s=acc["n"] / secs,
            data_wait_share=acc["wait"] / secs,
        )
        return EpochEnd(val_loss if validated else None, row)

    # -- the result ----------------------------------------------------------------------------
    def export(self, status: str, loop: TrainingLoop) -> Path | None:
        if not self.dist.is_main:
            return None
        # The weights in memory are the last epoch's (just saved as last.pt, or loaded by --resume).
        exported = loop.epoch
        if self.cfg["export_epoch"] == "best":
            loop.finish()  # best.pt may be the checkpoint still being written
            best = loop.folder.best
            if best.is_file() and loop.stopper.best_epoch + 1 != loop.epoch:
                state = load_checkpoint(best)
                self.method.load_state_dict(state["model"])
                # what the file holds, should a kill between last.pt and best.pt have left an older best
                exported = int(state["epoch"])
        self.exported_epoch = exported
        module, meta = self.method.export()
        meta.source = f"dermctl pretrain run {self.name}"
        meta.extra = {
            **meta.extra,
            "method": self.cfg["method"],
            "run": self.name,
            "best_epoch": loop.stopper.best_epoch + 1,
            "exported_epoch": exported,
            "status": status,
            "config": self.cfg,
        }
        # exported from memory while the last checkpoint is still being written
        path = export_backbone(module, loop.folder.root, meta)
        loop.finish()  # the last epoch's checkpoint is on disk before the run counts as done
        return path


def _as_log(log: Any) -> Callable[[str], None]:
    """A callable, a `logging.Logger` (its `info`) or None."""
    if log is None:
        return lambda _m: None
    if callable(log):
        return log
    return log.info


def _as_progress(progress: Any) -> Callable[[StepUpdate], None] | None:
    """A callable taking StepUpdate, a rich `Progress` (one task is added and updated) or None."""
    if progress is None or not hasattr(progress, "add_task"):
        return progress
    task = progress.add_task("pretrain", total=None)

    def update(u: StepUpdate) -> None:
        progress.update(
            task,
            total=u.batches,
            completed=u.batch,
            description=f"epoch {u.epoch}/{u.epochs} loss {u.loss:.4f} {u.images_per_s:.1f} img/s",
        )

    return update


@contextlib.contextmanager
def _offline_hint(cfg: dict[str, Any]) -> Iterator[None]:
    """Without the ImageNet weights of `init = "imagenet"` (the study's default for ColorMe, SimCLR and
    BYOL), one line saying how to go on offline."""
    try:
        yield
    except UnavailableError as exc:
        if cfg["init"] != "imagenet":
            raise
        raise UnavailableError(
            f"--init imagenet (the {cfg['method']} default, as in the study): {exc.message}; pass --init random "
            "to train from scratch, or --init PATH with a local weights file"
        ) from exc


def pretrain(
    cfg: dict[str, Any],
    data: list[Path],
    workspace: Workspace,
    *,
    name: str | None = None,
    resume: bool = False,
    force: bool = False,
    exclude: list[Path] | None = None,
    allow_task_images: bool = False,
    progress: Callable[[StepUpdate], None] | Any | None = None,
    log: Callable[[str], None] | Any | None = None,
    device: str = "auto",
    dist: Dist | None = None,
) -> RunSummary:
    """Pretrain `cfg['method']` on the train rows of `data` manifests into `runs/<name>/`.

    Everything is validated before training starts: the config, the backbone name, the device, the run
    folder (an existing run needs `resume=True`, or `force=True` to replace it), the data (evaluation images
    excluded and counted, images checked against their manifests' sha256). The run lock
    (`runs/<name>/.lock`) is taken before the data is read, so a second process of the same run is told at
    once which PID holds it. `resume=True` on a run without a checkpoint (killed before its first one)
    starts it afresh. Raises TrainingError on a NaN/Inf loss (status diverged, resumable checkpoint kept)
    and RunInterrupted (exit code 130) after checkpointing on SIGINT/SIGTERM; any other failure (a full
    disk, a bad image) leaves run.json at "interrupted" with the error, never at "running".
    """
    dist = dist or dist_from_env(device)
    say = _as_log(log) if dist.is_main else (lambda _m: None)
    progress = _as_progress(progress) if dist.is_main else None
    if resume and force:
        raise UsageError("--resume and --force: choose one (continue the run, or replace it)")
    validate_config(cfg)
    per_process_batch(cfg, dist.world_size)
    method_cls = get_method(cfg["method"])
    check_backbone_name(cfg["backbone"])
    dev = resolve_device(device, dist.local_rank if dist.enabled else None)
    if dev.type == "cuda":
        enable_tf32()
    resolve_precision(cfg["precision"], dev)
    name = name or default_run_name(cfg)
    if not _NAME_RE.match(name):
        raise UsageError(f"--name: {name!r} is not a valid run name (letters, digits, . _ + -)")
    run_dir = workspace.runs / name
    # rank 0 holds the lock and prepares the folder; the other ranks follow its decision
    lock = (
        RunFolder.pretraining(run_dir).lock("dermctl pretrain") if dist.is_main else contextlib.nullcontext()
    )
    with lock:
        if dist.is_main:
            resume = _prepare_run_dir(run_dir, cfg, resume=resume, force=force, say=say)
        else:
            resume = False
        return _pretrain_locked(
            cfg,
            data,
            workspace,
            name,
            resume,
            exclude,
            allow_task_images,
            say,
            progress,
            dev,
            dist,
            method_cls,
        )


def _shared_resume(dist: Dist, dev: torch.device, resume: bool) -> bool:
    """Rank 0's decision (resume, or start afresh) for every rank; the first collective of a run, after
    everything every rank checks alike (so a refused setup fails on all ranks before any collective)."""
    if not dist.enabled:
        return resume
    return dist.all_reduce_sum([1.0 if resume and dist.is_main else 0.0], dev)[0] > 0


def _prepare_run_dir(
    run_dir: Path, cfg: dict[str, Any], *, resume: bool, force: bool, say: Callable[[str], None]
) -> bool:
    """Check the (locked) run folder against resume/force; returns whether the run is really resumed."""
    folder = RunFolder.pretraining(run_dir)
    last = folder.last
    # Anything but the lock (an empty folder is no run; a folder with files but no checkpoint is a run
    # killed before its first one).
    started = any(p.name != ".lock" for p in run_dir.iterdir())
    if force and started:
        say(f"--force: replacing run folder {run_dir}")
        _clear_run_dir(run_dir)
        return False
    if started and not resume:
        raise ConflictError(
            f"run folder {run_dir} exists; pass --resume to continue it, --force to replace it, "
            "or --name for a new run"
        )
    if not resume:
        return False
    if not last.is_file():
        say(f"--resume: {run_dir} has no checkpoint yet ({last} not found): starting the run afresh")
        _clear_run_dir(run_dir)
        return False
    saved = read_json(folder.config).get("config", {})
    diffs = resume_differences(saved, cfg)
    if diffs:
        k = diffs[0]
        raise UsageError(
            f"--resume: config key {k!r} = {cfg.get(k)!r} differs from the run's {saved.get(k)!r} "
            "(a resumed run keeps its config; use --name for a new run)"
        )
    prev = read_json(folder.status).get("status") if folder.status.is_file() else "running"
    if prev in DONE_STATUSES:
        raise ConflictError(
            f"--resume: run {run_dir} has already ended (status {prev}); use --force to replace it or "
            "--name for a new run"
        )
    return True


def _clear_run_dir(run_dir: Path) -> None:
    """Remove everything of a run folder but its lock (held by this process)."""
    import shutil

    for p in run_dir.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _pretrain_locked(
    cfg: dict[str, Any],
    data: list[Path],
    workspace: Workspace,
    name: str,
    resume: bool,
    exclude: list[Path] | None,
    allow_task_images: bool,
    say: Callable[[str], None],
    progress: Callable[[StepUpdate], None] | None,
    dev: torch.device,
    dist: Dist,
    method_cls: type[PretrainMethod],
) -> RunSummary:
    """The run itself, with the run folder prepared and locked."""
    run_dir = workspace.runs / name
    folder = RunFolder.pretraining(run_dir)
    last = folder.last
    sync_bn = use_sync_bn(cfg) and dist.enabled
    pdata = load_pretrain_data(
        data, workspace, exclude=exclude, allow_task_images=allow_task_images, seed=cfg["seed"]
    )  # images checked against their manifests' sha256 here
    check_files(pdata.train + pdata.val)
    with _offline_hint(cfg):
        check_init(cfg["backbone"], cfg["init"])  # at once, not after the hub client's retries
    if pdata.skipped_task_manifests:
        say(f"skipped {len(pdata.skipped_task_manifests)} task manifest(s) found in --data folders")
    say(
        f"{len(pdata.train)} training and {len(pdata.val)} validation images"
        + (" (5% held out)" if pdata.held_out else "")
        + f"; {pdata.excluded} evaluation-task images excluded"
    )
    batch_size = per_process_batch(cfg, dist.world_size)
    global_batch = batch_size * dist.world_size
    if len(pdata.train) < global_batch:
        raise UsageError(
            f"--batch-size: the global batch {global_batch} (batch size {batch_size} x {dist.world_size} "
            f"process(es)) is larger than the {len(pdata.train)} training images (no full batch)"
        )
    ipe = len(dist.shard(list(range(len(pdata.train))))) // batch_size
    monitor = None
    if cfg.get("monitor_task"):
        monitor = KnnMonitor(find_task(workspace.manifests, cfg["monitor_task"]))

    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])

    resume = _shared_resume(dist, dev, resume)
    with _offline_hint(cfg):
        method = method_cls(cfg)
    if sync_bn:
        convert_sync_batchnorm(method, dev)
    method.to(dev)
    train_ds, val_ds = pretrain_datasets(pdata, method, cfg, workspace)  # after .to(dev): gpu_augment
    parts = _RunParts(
        method=method,
        optimizer=build_optimizer(method, cfg, dev),
        model=wrap_ddp(method, dist, dev),
        train_ds=train_ds,
        val_ds=val_ds,
        batch_size=batch_size,
        ipe=ipe,
        workers=resolve_num_workers(cfg["num_workers"]),
        sched=build_schedules(cfg, ipe, global_batch),
        method_sched={k: np.asarray(v) for k, v in method.schedules(cfg["epochs"], ipe).items()},
        monitor=monitor,
    )
    task = _PretrainTask(cfg, name, dev, dist, parts, say)

    def epoch_line(_epoch: int, row: dict[str, Any], _improved: bool) -> None:
        val = row["val_loss"]
        say(
            f"epoch {row['epoch']}/{cfg['epochs']}: train loss {row['train_loss']:.4f}"
            + (f", val loss {val:.4f}" if isinstance(val, float) and math.isfinite(val) else "")
            + (f", kNN macro-F1 {row['monitor_knn_f1']:.3f}" if row.get("monitor_knn_f1") is not None else "")
            + f", {row['images_per_s']:.1f} img/s"
        )

    loop = TrainingLoop(
        task,
        epochs=cfg["epochs"],
        stopper=EarlyStopping(cfg["patience"], cfg["min_delta"]),
        folder=folder,
        dist=dist,
        device=dev,
        log=say,
        progress=progress,
        on_epoch_end=epoch_line,
    )

    data_record = {
        "train_images": len(pdata.train),
        "val_images": len(pdata.val),
        "held_out_val": pdata.held_out,
        "excluded_task_images": pdata.excluded,
        "allow_task_images": allow_task_images,
        "exclude": [str(p) for p in exclude or []],
        "skipped_task_manifests": pdata.skipped_task_manifests,
    }
    if resume:
        loop.restore(load_checkpoint(last), last)
        say(
            f"resuming {name} at epoch {loop.epoch + 1}" + (f", batch {loop.batch + 1}" if loop.batch else "")
        )
        if dist.is_main:
            record = read_json(folder.config)
            record.setdefault("resumed", []).append(
                provenance(cfg, pdata.manifests)
                | {"data": data_record, "world_size": dist.world_size, "global_batch": global_batch}
            )
            atomic_write_json(folder.config, record)
    elif dist.is_main:
        record = {
            "config": cfg,
            "provenance": provenance(cfg, pdata.manifests),
            "data": data_record,
            "device": str(dev),
            "world_size": dist.world_size,
            "global_batch": global_batch,
            "batch_size_per_process": batch_size,
            "sync_bn": sync_bn,
            "iterations_per_epoch": ipe,
        }
        atomic_write_json(folder.config, record)
    loop.write_status("running")

    try:
        try:
            status = loop.run()
        finally:  # persistent loader workers end with the run, also when it stops early or fails
            close_loaders(task.train_ds)
            close_loaders(task.val_ds)
        if task.collapsed_epochs:
            status = "collapsed"
        dump_state_hash(task.method, dist, {"history": loop.history})
        backbone = task.export(status, loop)
        loop.write_status(status, "; ".join(task.warnings))
    except BaseException as exc:
        loop.failed(exc)
        raise
    best = loop.stopper.best
    return RunSummary(
        name=name,
        run_dir=run_dir,
        status=status,
        epochs_run=len(loop.history),
        best_epoch=loop.stopper.best_epoch + 1,
        best_val_loss=best if math.isfinite(best) else None,
        train_images=len(pdata.train),
        val_images=len(pdata.val),
        excluded=pdata.excluded,
        backbone=backbone,
        warnings=task.warnings,
        exported_epoch=task.exported_epoch,
    )


__all__ = [
    "RunInterrupted",
    "RunSummary",
    "StepUpdate",
    "build_optimizer",
    "build_schedules",
    "default_run_name",
    "pretrain",
]
