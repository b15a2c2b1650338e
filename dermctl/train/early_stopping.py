"""Early stopping on the validation loss, as in Gröger et al. (training stops when the val loss has not
improved for `patience` = 5 consecutive validated epochs)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Tracks the best val loss; `should_stop` after `patience` validations without an improvement.

    An improvement is a loss below `best - min_delta`. `patience = 0` disables stopping (the best
    epoch is still tracked). A NaN loss never counts as an improvement.
    """

    patience: int = 5
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, val_loss: float, epoch: int) -> bool:
        """Record one validated epoch; True when it is the new best."""
        if math.isfinite(val_loss) and val_loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = float(val_loss), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
