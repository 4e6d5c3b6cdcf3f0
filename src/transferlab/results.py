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

    def __repr__(self) -> str:
        acc = self.metrics.get("test_acc")
        shown = f"{acc:.4f}" if isinstance(acc, float) else acc
        where = str(self.run_dir) if self.run_dir else None
        return (f"RunResult(model={self.config.model!r}, data={self.config.data!r}, test_acc={shown}, "
                f"epochs={len(self.history)}, classes={len(self.classes)}, run_dir={where!r})")

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
