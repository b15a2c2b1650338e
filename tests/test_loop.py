"""dermctl.train.loop: the one training loop, on a toy task (a linear model, fixed batches) so that every
rule of the loop is seen alone: checkpoints and best.pt, resume in the middle of an epoch, SIGINT,
a bad loss, early stopping, run.json and metrics.csv."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from dermctl.errors import TrainingError
from dermctl.runtime.checkpoint import load_checkpoint
from dermctl.runtime.distributed import Dist
from dermctl.runtime.early_stopping import EarlyStopping
from dermctl.runtime.signals import RunInterrupted
from dermctl.train.loop import EpochEnd, LoopTask, TrainingLoop
from dermctl.workspace import RunFolder

BATCHES = 4


class Toy(LoopTask):
    """y = x @ w_true, one SGD step per batch; the val value is scripted when `vals` is given."""

    def __init__(self, vals: list[float] | None = None, hook: Any = None) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(BATCHES * 8, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.net = torch.nn.Linear(3, 1, bias=False)
        torch.nn.init.zeros_(self.net.weight)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.vals, self.hook, self.steps = vals, hook, 0

    def batches_per_epoch(self) -> int:
        return BATCHES

    def epoch_batches(self, epoch: int, skip: int) -> Iterable[Any]:
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(epoch))
        return [order[i * 8 : (i + 1) * 8] for i in range(skip, BATCHES)]

    def forward(self, batch: Any, epoch: int, b: int) -> tuple[torch.Tensor, dict[str, float], int]:
        self.steps += 1
        loss = ((self.net(self.x[batch]).squeeze(1) - self.y[batch]) ** 2).mean()
        if self.hook is not None:
            loss = self.hook(self.steps, loss)
        return loss, {"w0": float(self.net.weight[0, 0].detach())}, len(batch)

    def optimize(self, loss: torch.Tensor, epoch: int, b: int) -> None:
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def end_epoch(self, epoch: int, acc: dict[str, Any]) -> EpochEnd:
        with torch.no_grad():
            val = float(((self.net(self.x).squeeze(1) - self.y) ** 2).mean())
        value = self.vals[epoch] if self.vals is not None else val
        return EpochEnd(
            value, {"epoch": epoch + 1, "train_loss": acc["loss_sum"] / acc["n"], "val": value, "best": 0}
        )

    def metrics_columns(self, history: list[dict[str, Any]]) -> list[str]:
        return ["epoch", "train_loss", "val", "best"]

    def state(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict()}

    def restore(self, state: dict[str, Any], path: Path) -> bool:
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        return True

    def status_record(self, status: str, message: str, loop: TrainingLoop) -> dict[str, Any]:
        return {"status": status, "message": message, "epochs_run": len(loop.history)}


def make_loop(root: Path, task: Toy, epochs: int = 3, patience: int = 5) -> TrainingLoop:
    folder = RunFolder.pretraining(root)
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    return TrainingLoop(
        task,
        epochs=epochs,
        stopper=EarlyStopping(patience),
        folder=folder,
        dist=Dist(),
        device=torch.device("cpu"),
        log=lambda _m: None,
    )


def run_to_end(loop: TrainingLoop) -> str:
    try:
        status = loop.run()
        loop.finish()
        loop.write_status(status)
    except BaseException as exc:
        loop.failed(exc)
        raise
    return status


def status_of(root: Path) -> dict[str, Any]:
    return json.loads((root / "run.json").read_text())


def test_a_run_writes_rows_checkpoints_and_the_best_epoch(tmp_path: Path) -> None:
    vals = [3.0, 1.0, 2.0]
    loop = make_loop(tmp_path, Toy(vals))
    assert run_to_end(loop) == "finished"
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["best"] for r in rows] == ["1", "1", "0"]
    assert status_of(tmp_path) == {"status": "finished", "message": "", "epochs_run": 3}
    last = load_checkpoint(tmp_path / "checkpoints/last.pt")
    best = load_checkpoint(tmp_path / "checkpoints/best.pt")
    assert (last["epoch"], last["batch"], best["epoch"]) == (3, 0, 2)  # best.pt: the state after epoch 2
    assert last["iteration"] == 3 * BATCHES and len(last["history"]) == 3
    # train loss: the mean over the epoch's images of each step's loss
    assert float(rows[0]["train_loss"]) > float(rows[2]["train_loss"]) > 0


def test_sigint_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    full = Toy()
    run_to_end(make_loop(tmp_path / "a", full))

    def interrupt_at_6(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 6:  # epoch 2, batch 2
            loop.flag.signum = 2
        return loss

    loop = make_loop(tmp_path / "b", Toy(hook=interrupt_at_6))
    with pytest.raises(RunInterrupted, match="SIGINT in epoch 2 after batch 2"):
        run_to_end(loop)
    assert status_of(tmp_path / "b")["status"] == "interrupted"
    state = load_checkpoint(tmp_path / "b/checkpoints/last.pt")
    assert (state["epoch"], state["batch"], state["partial"]["n"]) == (1, 2, 16)
    again = make_loop(tmp_path / "b", Toy())
    again.restore(state, tmp_path / "b/checkpoints/last.pt")
    assert run_to_end(again) == "finished"
    assert torch.equal(again.task.net.weight, full.net.weight)  # type: ignore[attr-defined]
    assert again.history == make_loop_history(tmp_path / "a")


def make_loop_history(root: Path) -> list[dict[str, Any]]:
    return load_checkpoint(root / "checkpoints/last.pt")["history"]


def test_a_bad_loss_stops_before_the_step_with_the_last_good_state(tmp_path: Path) -> None:
    def nan_at_3(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * math.nan if step == 3 else loss

    task = Toy(hook=nan_at_3)
    loop = make_loop(tmp_path, task)
    with pytest.raises(TrainingError, match="loss became nan at epoch 1, iteration 2"):
        run_to_end(loop)
    assert status_of(tmp_path)["status"] == "diverged"
    state = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert (state["epoch"], state["batch"]) == (0, 2)
    assert torch.equal(state["model"]["weight"], task.net.weight.detach())  # not stepped with the NaN
    assert torch.isfinite(task.net.weight).all()


def test_early_stopping_and_a_resumed_stopped_run_trains_no_more(tmp_path: Path) -> None:
    loop = make_loop(tmp_path, Toy([3.0, 2.0, 2.5, 2.6, 1.0]), epochs=5, patience=2)
    assert run_to_end(loop) == "early_stopped"
    assert len(loop.history) == 4 and loop.stopper.best_epoch == 1
    assert load_checkpoint(tmp_path / "checkpoints/best.pt")["epoch"] == 2
    # killed after last.pt but before run.json said so: --resume ends at once, it does not train on
    state = load_checkpoint(tmp_path / "checkpoints/last.pt")
    task = Toy([3.0, 2.0, 2.5, 2.6, 1.0])
    again = make_loop(tmp_path, task, epochs=5, patience=2)
    again.restore(state, tmp_path / "checkpoints/last.pt")
    assert run_to_end(again) == "early_stopped"
    assert task.steps == 0 and len(again.history) == 4


def test_an_error_leaves_no_running_status(tmp_path: Path) -> None:
    def fail_at_2(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == BATCHES + 2:
            raise OSError("disk on fire")
        return loss

    loop = make_loop(tmp_path, Toy(hook=fail_at_2))
    loop.write_status("running")
    with pytest.raises(OSError):
        run_to_end(loop)
    st = status_of(tmp_path)
    assert st["status"] == "interrupted" and "disk on fire" in st["message"]
    assert load_checkpoint(tmp_path / "checkpoints/last.pt")["epoch"] == 1  # the epoch-end write finished
