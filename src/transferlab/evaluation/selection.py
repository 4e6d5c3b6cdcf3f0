"""Which epoch a run keeps: the best on the validation split by one metric, with optional early stopping.

Only the validation split is ever read here; a run without one keeps its last epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .metrics import selection_value

__all__ = ["Selector"]


@dataclass
class Selector:
    """Tracks the best epoch by ``metric`` (None: keep the last) and stops after ``patience`` epochs without gain."""

    metric: str | None
    patience: int = 0
    best_epoch: int | None = None
    best_value: float = -math.inf
    waited: int = 0
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def update(self, epoch: int, block: dict[str, Any], model: torch.nn.Module) -> bool:
        """Record epoch ``epoch``'s validation ``block``; True when training should stop here."""
        if self.metric is None:
            return False
        value = selection_value(block, self.metric)
        if self.best_epoch is None or value > self.best_value:
            self.best_epoch, self.best_value, self.waited = epoch, value, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.waited += 1
        self.stopped_early = bool(self.patience) and self.waited >= self.patience
        return self.stopped_early

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing to do when the last epoch is kept)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def summary(self, last_epoch: int) -> dict[str, Any]:
        """What ``metrics.json`` says of the choice."""
        if self.metric is None:
            return {"metric": None, "split": None, "best_epoch": last_epoch, "kept": "last epoch",
                    "stopped_early": False}
        value = -self.best_value if self.metric == "loss" else self.best_value
        return {"metric": self.metric, "split": "val", "best_epoch": self.best_epoch,
                "best_value": round(value, 4) if math.isfinite(value) else None,
                "kept": "best epoch", "stopped_early": self.stopped_early, "patience": self.patience or None}

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: everything, the best weights included, so a resume chooses as an unbroken run."""
        return {"metric": self.metric, "best_epoch": self.best_epoch, "best_value": self.best_value,
                "waited": self.waited, "stopped_early": self.stopped_early, "best_state": self.best_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_value = state["best_epoch"], float(state["best_value"])
        self.waited, self.stopped_early = int(state["waited"]), bool(state["stopped_early"])
        self.best_state = state["best_state"]
