"""What a run gives back: its result in memory, and the decoded data it trained on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..errors import TransferlabError, opt

if TYPE_CHECKING:
    import torch

    from ..models.model import TransferModel

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
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the test images, one row each
    stages: list[dict[str, Any]] = field(default_factory=list)  # decode, head warm-up: metrics.jsonl's stage rows

    def __repr__(self) -> str:
        from ..console import score_text

        acc = self.metrics.get("test_acc")
        test = self.metrics.get("test") or {}
        shown = score_text(test) if test.get("accuracy") is not None else f"{acc:.4f}" if isinstance(acc, float) \
            else acc
        where = str(self.run_dir) if self.run_dir else None
        return (f"RunResult(model={self.config.model!r}, data={self.config.data!r}, test_acc={shown}, "
                f"epochs={len(self.history)}, classes={len(self.classes)}, run_dir={where!r})")

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])

    def _repr_html_(self) -> str:
        """In Jupyter: the metrics, the learning curve and the confusion matrix."""
        from ..reporting.run import summary_html

        return summary_html(self.metrics, self.history)

    def plot(self, what: str = "curves") -> Any:
        """A matplotlib Figure: the learning ``curves`` (head warm-up as its own phase) or the ``confusion`` matrix.

        In Jupyter it shows inline.
        """
        from ..reporting.common import figures_inline
        from ..reporting.run import confusion_figure, learning_curve_figure

        draw = {"curves": lambda: learning_curve_figure(self.history, self.metrics),
                "confusion": lambda: confusion_figure(self.metrics)}
        if what not in draw:
            raise TransferlabError(f"{opt('what', what)}: choose curves or confusion")
        figures_inline()
        return draw[what]()

    def show_mistakes(self, k: int = 12) -> Any:
        """A Figure of the ``k`` most confident mistakes on the test split, as the crops the model saw."""
        from ..data.transforms import Preprocessing
        from ..reporting.common import figures_inline
        from ..reporting.run import mistakes_figure

        figures_inline()
        return mistakes_figure(self.predictions, Path(self.metrics["data_root"]),
                               Preprocessing.from_dict(self.metrics["preprocessing"]), k)

    def to_pandas(self) -> Any:
        """The per-epoch history as a pandas DataFrame, indexed by epoch (needs pandas); empty, with that index,
        for a run whose model is its head warm-up's (no epoch ran)."""
        try:
            import pandas as pd
        except ImportError:
            raise TransferlabError("to_pandas needs pandas: pip install pandas (or use result.history, a list of "
                                   "dicts)") from None
        if not self.history:
            return pd.DataFrame(index=pd.Index([], name="epoch"))
        return pd.DataFrame(self.history).set_index("epoch")


@dataclass
class PreparedData:
    """The decoded images of a run: training images (resized), val and test images (eval crops), labels, keys."""

    train_images: list[torch.Tensor]
    train_labels: torch.Tensor
    train_key: str
    test_images: torch.Tensor
    test_labels: torch.Tensor
    test_key: str
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_key: str | None = None

    def eval_images(self, split: str) -> torch.Tensor:
        """The eval crops of ``split`` ("val" or "test")."""
        return self.val_images if split == "val" else self.test_images

    def eval_labels(self, split: str) -> torch.Tensor:
        return self.val_labels if split == "val" else self.test_labels
