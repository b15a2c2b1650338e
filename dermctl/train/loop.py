"""The one training loop that pretraining (`dermctl.train.engine`) and fine-tuning (`dermctl.train.finetune`)
both run on, so interruption, resume, checkpoints, early stopping, divergence and DDP behave the same.

The loop owns the run's position and its run-folder bookkeeping; a `LoopTask` owns the model, its data and
its maths. Per epoch:

    batches     the task's batches of the epoch, after those a resumed checkpoint already trained on
    per step    `forward` (the task's loss); the loss is averaged over the processes and a NaN/Inf is
                refused before any parameter moves (the current state is saved: it is the last good one,
                status "diverged", TrainingError); `optimize` (backward and step); SIGINT/SIGTERM stops
                after the step with a checkpoint of the partly trained epoch (status "interrupted",
                RunInterrupted, exit 130) that `--resume` continues batch for batch. Under torchrun the
                stop is voted in the loss's all-reduce, so a signal that reaches any process stops every
                process after the same step
    epoch end   `end_epoch` (validation: the early-stopping value, or None on an epoch that is not
                validated, and the metrics row); rank 0's value decides for every process; early stopping
                (`dermctl.runtime.early_stopping`); metrics.csv rewritten; last.pt (and best.pt, the same
                bytes, on a new best) written by a background thread while the next epoch trains; run.json
                "running"

A checkpoint is the task's `state()` plus the loop's keys: `epoch` (epochs completed, so the next one to
run, 0-based), `batch` (batches of that epoch already trained), `partial` (their accumulators),
`early_stopping`, `history` (the metrics rows). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dermctl.errors import DataError, DermctlError, TrainingError
from dermctl.runtime.checkpoint import CheckpointWriter, save_checkpoint
from dermctl.runtime.distributed import Dist
from dermctl.runtime.early_stopping import EarlyStopping
from dermctl.runtime.signals import RunInterrupted, StopFlag, stop_on_signals
from dermctl.train.health import EpochLogs
from dermctl.workspace import RunFolder, atomic_write_json, write_rows_csv


@dataclass
class StepUpdate:
    """What the progress callback receives after every training step."""

    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based within the epoch
    batches: int
    loss: float
    images_per_s: float
    data_wait_share: float


@dataclass
class EpochEnd:
    """What a task reports at the end of an epoch: the early-stopping value (None: not validated this
    epoch) and the metrics row. A row with a `best` key gets 1 there when the epoch is the new best."""

    value: float | None
    row: dict[str, Any]


class LoopTask:
    """What one kind of training gives the loop. Subclasses implement every method."""

    #: what early stopping watches, for the log line ("val loss", "val macro-F1")
    monitored = "val loss"
    #: the end of the divergence message: what to change before going on
    divergence_hint = "lower the learning rate, then --resume"

    def epoch_batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """The batches of `epoch` (0-based) after its first `skip` (trained before a resume); the model in
        training mode."""
        raise NotImplementedError

    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def forward(self, batch: Any, epoch: int, b: int) -> tuple[torch.Tensor, dict[str, float], int]:
        """(loss, the step's logs, images of this process's batch) for batch `b` (0-based) of `epoch`."""
        raise NotImplementedError

    def optimize(self, loss: torch.Tensor, epoch: int, b: int) -> None:
        """Backward and optimiser step for the loss `forward` returned."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, acc: dict[str, Any]) -> EpochEnd:
        """Validation and the metrics row of a completed epoch (`acc`: the loop's accumulators)."""
        raise NotImplementedError

    def metrics_columns(self, history: list[dict[str, Any]]) -> list[str]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """The task's part of a checkpoint (model, optimiser, ...): plain containers only."""
        raise NotImplementedError

    def restore(self, state: dict[str, Any], path: Path) -> bool:
        """Load the task's part of a checkpoint read from `path` (named in errors); False when a partly trained epoch cannot be continued
        (it is then redone from its first batch)."""
        raise NotImplementedError

    def status_record(self, status: str, message: str, loop: TrainingLoop) -> dict[str, Any]:
        """run.json for `status`."""
        raise NotImplementedError


def load_states(path: Path, state: dict[str, Any], **targets: Any) -> None:
    """`target.load_state_dict(state[key])` for each key=target (a module, an optimiser); a checkpoint that
    does not fit is one DataError naming `path`."""
    try:
        for key, target in targets.items():
            target.load_state_dict(state[key])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: does not fit this run's model: {str(exc).splitlines()[0][:160]}") from exc


def new_accumulators() -> dict[str, Any]:
    return {"loss_sum": 0.0, "n": 0, "logs": EpochLogs().state_dict(), "seconds": 0.0, "wait": 0.0}


def fmt_cell(v: Any) -> str:
    """A metrics.csv cell: empty for None and NaN, true/false for booleans, repr for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def write_metrics(path: Path, columns: list[str], history: list[dict[str, Any]]) -> None:
    write_rows_csv(path, columns, [[fmt_cell(row.get(c)) for c in columns] for row in history])


def _batches(loader: Iterable[Any], flag: StopFlag) -> Iterator[Any]:
    """Iterate a loader; an error re-raised from a worker process keeps its one-line message, and workers
    ended by the same Ctrl-C that set `flag` end the epoch quietly (the caller checkpoints)."""
    try:
        yield from loader
    except RuntimeError:
        if flag.signum is None:
            raise
    except DermctlError as exc:
        if "\n" not in exc.message:
            raise
        last = exc.message.strip().splitlines()[-1]
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        raise type(exc)(last.removeprefix(prefix)) from None


class TrainingLoop:
    """Runs a `LoopTask` for `epochs` epochs in `folder` (module docstring)."""

    def __init__(
        self,
        task: LoopTask,
        *,
        epochs: int,
        stopper: EarlyStopping,
        folder: RunFolder,
        dist: Dist,
        device: torch.device,
        log: Callable[[str], None],
        progress: Callable[[StepUpdate], None] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any], bool], None] | None = None,
    ) -> None:
        self.task, self.epochs, self.stopper, self.folder = task, epochs, stopper, folder
        self.dist, self.device, self.log, self.progress = dist, device, log, progress
        self.on_epoch_end = on_epoch_end
        self.epoch = 0  # epochs completed = the next one to run (0-based)
        self.batch = 0  # batches of `epoch` already trained on (a mid-epoch checkpoint)
        self.partial: dict[str, Any] | None = None  # accumulators of that partly trained epoch
        self.history: list[dict[str, Any]] = []
        self.flag = StopFlag()
        self.writer = CheckpointWriter()
        self.last_status: str | None = None  # what run.json says now (written by this process)

    @property
    def iteration(self) -> int:
        return self.epoch * self.task.batches_per_epoch() + self.batch

    # -- checkpoints and status -----------------------------------------------------------------
    def state(self, acc: dict[str, Any] | None) -> dict[str, Any]:
        return {
            **self.task.state(),
            "epoch": self.epoch,
            "batch": self.batch,
            "iteration": self.iteration,
            "partial": acc,
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        continues = self.task.restore(state, path)
        self.epoch, self.batch, self.partial = int(state["epoch"]), int(state["batch"]), state["partial"]
        if not continues:
            self.batch, self.partial = 0, None
        self.stopper.load_state_dict(state["early_stopping"])
        self.history = [dict(h) for h in state["history"]]

    def save(self, acc: dict[str, Any] | None, *, best: bool = False, background: bool = False) -> None:
        """Checkpoint to last.pt (and best.pt). `background`: written while the next epoch trains (epoch
        ends); otherwise on disk when this returns (interruption, divergence)."""
        if not self.dist.is_main:
            return
        state = self.state(acc)
        copies = [self.folder.best] if best else []
        if background:
            self.writer.submit(state, self.folder.last, copies)
        else:
            self.writer.wait()
            save_checkpoint(state, self.folder.last, copies)

    def write_status(self, status: str, message: str = "") -> None:
        if not self.dist.is_main:
            return
        self.last_status = None  # unknown until the write below succeeds
        atomic_write_json(self.folder.status, self.task.status_record(status, message, self))
        self.last_status = status

    def finish(self) -> None:
        """Wait until the last checkpoint is on disk (before a run counts as done or best.pt is read)."""
        self.writer.wait()

    def failed(self, exc: BaseException) -> None:
        """After an error that wrote no status of its own (a full disk, a bad image, a second Ctrl-C),
        run.json must not stay "running": it says "interrupted" with the error (--resume continues from
        the last checkpoint); when even that cannot be written (the disk is full), it is removed."""
        if not self.dist.is_main:
            return
        with contextlib.suppress(BaseException):  # a write in flight ends before the status is told
            self.writer.wait()
        if self.last_status not in ("running", None):
            return
        if self.last_status is None and not self.folder.status.is_file():
            return
        text = exc.message if isinstance(exc, DermctlError) else f"{type(exc).__name__}: {exc}"
        line = (text.strip().splitlines() or ["interrupted"])[0][:300]
        try:
            self.write_status(
                "interrupted", f"stopped by an error: {line}; fix it, then continue with --resume"
            )
        except (DermctlError, OSError):
            with contextlib.suppress(OSError):
                self.folder.status.unlink()

    def diverged(self, loss_value: float, b: int, acc: dict[str, Any]) -> None:
        # The parameters have not been stepped with the bad loss: the current state is the last good one.
        self.batch = b
        self.save(acc)
        msg = (
            f"loss became {loss_value} at epoch {self.epoch + 1}, iteration {self.iteration}; "
            f"resumable checkpoint {self.folder.last} ({self.task.divergence_hint})"
        )
        self.write_status("diverged", msg)
        raise TrainingError(msg)

    def interrupted(self, acc: dict[str, Any] | None) -> None:
        self.save(acc)
        sig = signal.Signals(self.flag.signum).name if self.flag.signum else "signal"
        msg = (
            f"interrupted by {sig} in epoch {self.epoch + 1} after batch {self.batch}; {self.folder.last} "
            "holds that state: run the same command with --resume to continue"
        )
        self.write_status("interrupted", msg)
        raise RunInterrupted(msg)

    # -- the loop -------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        epoch, task, world = self.epoch, self.task, self.dist.world_size
        acc = self.partial or new_accumulators()
        logs = EpochLogs()
        logs.load_state_dict(acc["logs"])
        t_start = time.perf_counter()
        seconds0 = acc["seconds"]
        t0 = t_start
        for b, batch in enumerate(
            _batches(task.epoch_batches(epoch, self.batch), self.flag), start=self.batch
        ):
            acc["wait"] += time.perf_counter() - t0
            loss, step_logs, n_local = task.forward(batch, epoch, b)
            # Every process must stop together (on a bad loss, on a signal that reached only some of them),
            # or the others would wait for it forever: one all-reduce carries the loss and the stop votes.
            loss_value, voted_stop = self._reduce_step(float(loss.detach().float().item()))
            if not math.isfinite(loss_value):
                self.diverged(loss_value, b, acc)
            task.optimize(loss, epoch, b)
            n = n_local * world  # images of the global batch
            acc["loss_sum"] += loss_value * n
            acc["n"] += n
            logs.add({k: float(v) for k, v in step_logs.items()}, n)
            acc["logs"] = logs.state_dict()
            acc["seconds"] = seconds0 + (time.perf_counter() - t_start)
            self.batch = b + 1
            if self.progress is not None:
                secs = max(acc["seconds"], 1e-9)
                self.progress(
                    StepUpdate(
                        epoch + 1,
                        self.epochs,
                        b + 1,
                        task.batches_per_epoch(),
                        loss_value,
                        acc["n"] / secs,
                        acc["wait"] / secs,
                    )
                )
            if voted_stop or (not self.dist.enabled and self.flag.signum is not None):
                self.interrupted(acc)
            t0 = time.perf_counter()
        return acc

    def _reduce_step(self, loss_value: float) -> tuple[float, bool]:
        """(the loss averaged over the processes, whether any process has been signalled to stop)."""
        if not self.dist.enabled:
            return loss_value, False
        total, votes = self.dist.all_reduce_sum(
            [loss_value, float(self.flag.signum is not None)], self.device
        )
        return total / self.dist.world_size, votes > 0

    def _stop_requested(self) -> bool:
        """At an epoch boundary: has any process been signalled? (the same decision on every process)"""
        if not self.dist.enabled:
            return self.flag.signum is not None
        return self._reduce_step(0.0)[1]

    def _shared(self, value: float | None) -> float | None:
        """Rank 0's early-stopping value on every process (the processes decide alike)."""
        if not self.dist.enabled:
            return value
        main = self.dist.is_main
        flag, v = self.dist.all_reduce_sum(
            [1.0 if main and value is not None else 0.0, float(value) if main and value is not None else 0.0],
            self.device,
        )
        return v if flag > 0 else None

    def run(self) -> str:
        """Train until the epoch limit or early stopping; "finished" or "early_stopped". The last
        checkpoint may still be being written when this returns (`finish`)."""
        status = "early_stopped" if self.stopper.should_stop else "finished"
        with stop_on_signals(self.flag):
            while self.epoch < self.epochs and not self.stopper.should_stop:
                acc = self.train_epoch()
                epoch = self.epoch
                if self._stop_requested():
                    self.interrupted(acc)
                end = self.task.end_epoch(epoch, acc)
                value = self._shared(end.value)
                improved = self.stopper.step(value, epoch) if value is not None else False
                row = end.row
                if "best" in row:
                    row["best"] = int(improved)
                self.history.append(row)
                self.epoch, self.batch, self.partial = epoch + 1, 0, None
                if self.dist.is_main:
                    write_metrics(self.folder.metrics, self.task.metrics_columns(self.history), self.history)
                self.save(None, best=improved, background=True)
                self.write_status("running")
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch, row, improved)
                if self.stopper.should_stop:
                    status = "early_stopped"
                    self.log(
                        f"early stopping: {self.task.monitored} has not improved for {self.stopper.patience} epochs"
                    )
                    break
                if self._stop_requested():  # arrived during validation
                    self.interrupted(None)
        return status


__all__ = [
    "EpochEnd",
    "LoopTask",
    "StepUpdate",
    "TrainingLoop",
    "fmt_cell",
    "load_states",
    "new_accumulators",
    "write_metrics",
]
