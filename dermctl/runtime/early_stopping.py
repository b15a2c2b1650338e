"""Early stopping on a validated value, one class for pretraining and fine-tuning.

Pretraining stops on the val loss as in Gröger et al. (training stops when the val loss has not improved
for `patience` = 5 consecutive validated epochs); fine-tuning on the val macro-F1 (higher is better) or
the val loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MODES = ("min", "max")


@dataclass
class EarlyStopping:
    """Tracks the best value; `should_stop` after `patience` validations without an improvement.

    mode "min": lower is better (a loss); "max": higher is better (an F1). An improvement is a value
    beyond `best` by more than `min_delta`; ties keep the earlier epoch. `patience = 0` disables stopping
    (the best epoch is still tracked). A NaN never counts as an improvement.
    """

    patience: int = 5
    min_delta: float = 0.0
    mode: str = "min"
    best: float = field(default=math.nan)
    best_epoch: int = -1
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"early stopping mode {self.mode!r} is not one of {', '.join(MODES)}")
        if math.isnan(self.best):
            self.best = math.inf if self.mode == "min" else -math.inf

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record one validated epoch; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # fine-tuning checkpoints of 0.1.0 hold None before the first finite value
        best = state["best"]
        self.best = float(best) if best is not None else (math.inf if self.mode == "min" else -math.inf)
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
