"""How sure a test score is: 95 % intervals, the majority-class baseline, and paired differences.

Accuracy is a proportion: its interval is Wilson's score interval (right near 0 and 1, and on
50 images, where the normal approximation is not). Balanced accuracy, macro-F1 and ROC AUC are
not proportions of the images: their intervals come from a bootstrap that resamples the images
within each true class, so every resample keeps the split's class counts (percentile interval,
a fixed seed, so a run's numbers are reproducible). A difference between two models scored on
the same images is bootstrapped over those images, paired (:func:`paired_difference`).

Resamples are drawn as multinomial weights over the images, so one resample of every metric is
a weighted sum: no metric is recomputed per resample in a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["LEVEL", "RESAMPLES", "wilson", "bootstrap_intervals", "uncertainty", "paired_difference",
           "paired_accuracy"]

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
_Z = 1.959963984540054  # the normal quantile of (1 + LEVEL) / 2


def wilson(successes: float, n: int) -> tuple[float, float] | None:
    """Wilson's 95 % score interval of a proportion ``successes / n`` (None when ``n`` is 0)."""
    if n <= 0:
        return None
    p, z2 = successes / n, _Z * _Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _weights(labels: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights (resamples x images), drawn within each true class: each class keeps its count."""
    weights = np.zeros((resamples, len(labels)), dtype=np.float32)  # counts, exact in float32
    for c in np.unique(labels):
        index = np.flatnonzero(labels == c)
        n = len(index)
        draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
        weights[:, index] = np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)
    return weights


def _percentile(values: np.ndarray) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - LEVEL) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _macro_f1(weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each resample, over the classes a resample has as truth or prediction (torchmetrics' rule)."""
    onehot_pred = np.eye(k)[predicted]
    predicted_count = weights @ onehot_pred  # resamples x classes
    true_count = weights @ np.eye(k)[labels]
    hits = weights @ (onehot_pred * (labels == predicted)[:, None])
    denominator = predicted_count + true_count
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * hits / denominator, np.nan)
    return np.nanmean(f1, axis=1)


def _auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of each resample: the weighted share of (positive, negative) pairs ordered right, ties half."""
    order = np.argsort(score, kind="stable")
    score, positive, weights = score[order], positive[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, score[1:] != score[:-1]])  # runs of tied scores
    pos = np.add.reduceat(weights * positive, starts, axis=1)
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / pairs


def bootstrap_intervals(labels: np.ndarray, probs: np.ndarray, resamples: int = RESAMPLES,
                        seed: int = SEED) -> dict[str, tuple[float, float] | None]:
    """Stratified-bootstrap 95 % intervals of balanced accuracy, macro-F1 and (two classes) ROC AUC."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    predicted = probs.argmax(1)
    weights = _weights(labels, resamples, np.random.default_rng(seed))
    correct = (labels == predicted).astype(np.float64)
    recalls = [(weights[:, labels == c] @ correct[labels == c]) / (labels == c).sum() for c in np.unique(labels)]
    found: dict[str, tuple[float, float] | None] = {
        "balanced_accuracy": _percentile(np.mean(recalls, axis=0)),
        "macro_f1": _percentile(_macro_f1(weights, labels, predicted, k)),
    }
    if k == 2:
        found["roc_auc"] = _percentile(_auc(weights, labels == 1, probs[:, 1])) if len(np.unique(labels)) == 2 \
            else None
    return found


def _rounded(pair: tuple[float, float] | None, digits: int) -> list[float] | None:
    return None if pair is None else [round(float(pair[0]), digits), round(float(pair[1]), digits)]


def uncertainty(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                   digits: int = 4) -> dict[str, Any]:
    """The ``intervals`` and ``baseline`` entries of a test metric block.

    ``baseline``: always answering the split's most frequent class (the best any constant answer scores
    on it), with its accuracy's interval; every constant answer has balanced accuracy 1 / classes present.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    hits = float((np.asarray(probs).argmax(1) == labels).sum())
    intervals: dict[str, Any] = {"level": LEVEL, "accuracy": _rounded(wilson(hits, n), digits)}
    intervals.update({k: _rounded(v, digits) for k, v in bootstrap_intervals(labels, probs).items()})
    intervals["method"] = {"accuracy": "Wilson score",
                           "others": f"bootstrap within each class, {RESAMPLES} resamples, percentile"}
    counts = np.bincount(labels, minlength=len(classes))
    majority = int(counts.argmax())
    baseline = {"rule": "always the split's most frequent class", "class": classes[majority],
                "accuracy": round(float(counts[majority] / n), digits),
                "accuracy_interval": _rounded(wilson(counts[majority], n), digits),
                "balanced_accuracy": round(1 / int((counts > 0).sum()), digits)}
    return {"intervals": intervals, "baseline": baseline}


def paired_difference(a: np.ndarray, b: np.ndarray, labels: np.ndarray, resamples: int = RESAMPLES,
                      seed: int = SEED) -> dict[str, Any]:
    """Accuracy of ``a`` minus accuracy of ``b`` over the same images, with a paired 95 % bootstrap interval.

    ``a``, ``b``: per-image correctness (0/1, or a share of seeds right); ``labels``: the true class of each
    image (resampled within class). ``separates`` is True when the interval excludes 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    diff = a - b
    weights = _weights(labels, resamples, np.random.default_rng(seed))
    spread = _percentile(weights @ diff / len(diff))
    lo, hi = spread if spread else (float("nan"), float("nan"))
    return {"difference": float(diff.mean()), "interval": [lo, hi], "images": len(diff),
            "separates": bool(lo > 0 or hi < 0)}


Rows = Sequence[dict[str, Any]]  # prediction rows of one model on one test split


def paired_accuracy(pairs: Iterable[tuple[Rows, Rows]]) -> dict[str, Any] | None:
    """Model A's accuracy minus model B's over the test images both scored, from their prediction rows
    (``path``, ``label``, ``correct``: ``test_predictions.csv``): :func:`paired_difference`, the images
    resampled within each pair and true class. ``pairs``: (A's rows, B's rows) per test split, e.g. per seed;
    ``pairs`` in the result counts those that shared images. None when no image is shared.
    """
    xs, ys, strata, used = [], [], [], 0
    names: dict[tuple[int, str], int] = {}
    for k, (mine, theirs) in enumerate(pairs):
        other = {str(r["path"]): int(r["correct"]) for r in theirs}
        shared = sorted((r for r in mine if str(r["path"]) in other), key=lambda r: str(r["path"]))
        used += bool(shared)
        for row in shared:
            xs.append(int(row["correct"]))
            ys.append(other[str(row["path"])])
            strata.append(names.setdefault((k, str(row["label"])), len(names)))
    if not xs:
        return None
    return {**paired_difference(np.array(xs), np.array(ys), np.array(strata)), "pairs": used}
