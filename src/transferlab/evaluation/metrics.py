"""Classification metrics of one set of predictions, in the one schema of runs, ``evaluate`` and studies.

The definitions are torchmetrics' (``torchmetrics.functional.classification``): torch is
already here, and torchmetrics adds one small package, where scikit-learn would add
scipy and joblib. A *metric block* is::

    {"split": "test", "images": 50, "accuracy": .., "balanced_accuracy": .., "macro_f1": ..,
     "nll": .., "ece": .., "per_class": {name: {"precision", "recall", "f1", "support"}},
     "confusion": {"rows": "true", "columns": "predicted", "labels": [...], "matrix": [[...]]},
     # two classes only, the positive class being class 1:
     "roc_auc": .., "average_precision": .., "positive_class": name,
     # with intervals=True (a test split: what a run and ``evaluate`` report), see .intervals:
     "intervals": {"level": 0.95, "accuracy": [lo, hi], "balanced_accuracy": .., "macro_f1": .., "roc_auc": ..},
     "baseline": {"class": name, "accuracy": .., "accuracy_interval": [lo, hi], "balanced_accuracy": ..}}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["DIGITS", "ECE_BINS", "metric_block", "selection_value", "prediction_rows",
           "fit_temperature", "class_weights", "prediction_arrays",
           "expected_calibration_error", "binary_curves"]

DIGITS = 4  # floats are rounded to this many decimals (a test split of 1,000 images resolves 0.001)
ECE_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # the temperatures fit_temperature may return


def _round(value: float) -> float | None:
    value = float(value)
    return round(value, DIGITS) if math.isfinite(value) else None


def metric_block(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], split: str,
                 intervals: bool = False) -> dict[str, Any]:
    """Every metric of ``logits`` against ``labels`` (see the module docstring); ``intervals``: with their 95 %
    intervals and the majority-class baseline (the test split's scores, as shown to a user)."""
    from torchmetrics.functional import classification as tm

    logits, labels = logits.float().cpu(), labels.long().cpu()
    k, n = len(classes), len(labels)
    block: dict[str, Any] = {"split": split, "images": n}
    if n == 0:
        return block
    probs = logits.softmax(1)
    common = {"num_classes": k, "validate_args": False}
    precision = tm.multiclass_precision(probs, labels, average="none", **common)
    recall = tm.multiclass_recall(probs, labels, average="none", **common)
    f1 = tm.multiclass_f1_score(probs, labels, average="none", **common)
    confusion = tm.multiclass_confusion_matrix(probs, labels, **common)
    support = confusion.sum(1)
    present = support > 0  # a class the split lacks has no recall; it does not count in the mean
    block.update({
        "accuracy": _round(tm.multiclass_accuracy(probs, labels, average="micro", **common)),
        "balanced_accuracy": _round(recall[present].mean()),
        "macro_f1": _round(tm.multiclass_f1_score(probs, labels, average="macro", **common)),
        "nll": _round(nn.functional.cross_entropy(logits, labels)),
        "ece": _round(tm.multiclass_calibration_error(probs, labels, n_bins=ECE_BINS, norm="l1", **common)),
        "per_class": {name: {"precision": _round(precision[i]), "recall": _round(recall[i]), "f1": _round(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "confusion": {"rows": "true", "columns": "predicted", "labels": list(classes),
                      "matrix": confusion.tolist()},
    })
    if k == 2:
        both = bool(present.all())  # AUC needs both classes in the split
        block["roc_auc"] = _round(tm.binary_auroc(probs[:, 1], labels, validate_args=False)) if both else None
        block["average_precision"] = (_round(tm.binary_average_precision(probs[:, 1], labels, validate_args=False))
                                      if both else None)
        block["positive_class"] = classes[1]
    if intervals:
        from .intervals import uncertainty

        block.update(uncertainty(labels.numpy(), probs.numpy(), classes, DIGITS))
    return block


def selection_value(block: dict[str, Any], metric: str) -> float:
    """The value a run maximises when it selects on ``metric`` (the loss is negated)."""
    key = "nll" if metric == "loss" else metric
    value = block.get(key)
    if value is None:
        return -math.inf
    return -value if metric == "loss" else value


def prediction_rows(paths: Sequence[str], labels: Sequence[int], probs: torch.Tensor,
                    classes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per image: path, label, predicted, correct, and a probability per class (sorted by path)."""
    rows = []
    for path, label, p in zip(paths, labels, probs.tolist()):
        pred = max(range(len(classes)), key=p.__getitem__)
        row = {"path": str(path), "label": classes[label], "predicted": classes[pred], "correct": int(pred == label)}
        row.update({f"prob_{c}": round(v, 6) for c, v in zip(classes, p)})
        rows.append(row)
    return sorted(rows, key=lambda r: r["path"])


@torch.enable_grad()
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``logits / T`` (temperature scaling, Guo et al. 2017)."""
    logits, labels = logits.detach().float().cpu().clone(), labels.long().cpu()  # clone: out of inference mode
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    # a validation split the model gets all right has its optimum at T -> 0 (every logit to infinity);
    # the bounds keep the saved head finite and the probabilities usable
    return round(min(max(t, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1]), DIGITS) if math.isfinite(t) else 1.0


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, n / (k * n_c), so the weighted mean over the training set is 1."""
    counts = torch.bincount(labels.long(), minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))


def prediction_arrays(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray,
                                                                                        np.ndarray]:
    """(true label indices, predicted indices, probabilities N x C) of prediction rows."""
    index = {str(c): i for i, c in enumerate(classes)}

    def label(value: Any) -> int:
        text = str(value)
        return index[text] if text in index else int(float(text))

    labels = np.array([label(r["label"]) for r in rows], dtype=np.int64)
    predicted = np.array([label(r["predicted"]) for r in rows], dtype=np.int64)
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=np.float64)
    return labels, predicted, probs.reshape(len(rows), len(classes))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of top-class confidences against 0/1 correctness (torchmetrics' definition, as in ``metrics.json``)."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error

    if not len(confidence):
        return float("nan")
    return float(binary_calibration_error(torch.as_tensor(confidence, dtype=torch.float64),
                                          torch.as_tensor(correct).long(), n_bins=bins, norm="l1"))


def binary_curves(y: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall curves of 0/1 truth against scores, with ROC AUC and AP (torchmetrics)."""
    import torch
    from torchmetrics.functional import classification as tm

    preds, target = torch.as_tensor(score, dtype=torch.float64), torch.as_tensor(y).long()
    fpr, tpr, _ = tm.binary_roc(preds, target)
    precision, recall, _ = tm.binary_precision_recall_curve(preds, target)
    return {"fpr": fpr.numpy(), "tpr": tpr.numpy(), "roc_auc": float(tm.binary_auroc(preds, target)),
            "precision": precision.flip(0).numpy(), "recall": recall.flip(0).numpy(),  # recall rising from 0
            "average_precision": float(tm.binary_average_precision(preds, target)),
            "prevalence": float(target.float().mean())}
