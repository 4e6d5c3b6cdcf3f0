"""What a run gives back: its result in memory, and the decoded data it trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import RunConfig

if TYPE_CHECKING:
    import torch

    from .models import TransferModel

__all__ = ["RunResult", "PreparedData"]


@dataclass
class RunResult:
    """What a finished run leaves behind, in memory and in ``run_dir``."""

    run_dir: Path | None
    config: RunConfig
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: TransferModel | None = None

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])


@dataclass
class PreparedData:
    """The decoded images of a run: training images (resized), test images (eval crops), labels, cache keys."""

    train_images: list[torch.Tensor]
    train_labels: torch.Tensor
    train_key: str
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_key: str
