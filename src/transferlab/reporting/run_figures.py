"""Figures of one run: learning curves, ROC and precision-recall, reliability, training crops.

Like :mod:`transferlab.reporting.figures` (which holds the confusion matrix and the mistakes grid, shared
with the study report), each function returns a matplotlib Figure built without pyplot, or
None where the run's files hold nothing to draw. Prediction rows are ``test_predictions.csv``
rows (``path, label, predicted, correct, prob_<class>...``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import rundir
from ..console import count
from ..evaluation.metrics import ECE_BINS, binary_curves, expected_calibration_error, prediction_arrays
from .figures import honest_scale, image_grid, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data.transforms import Preprocessing

__all__ = ["kept_words", "learning_curve_figure", "clock_figure", "roc_pr_figure", "reliability_figure", "crops_figure"]

TRAIN, EVAL, WARM, TEST = "#2b6cb0", "#dd6b20", "#38a169", "#9b2c2c"
SPLIT_NAMES = {"val": "validation", "test": "test"}


def _reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> list[tuple[float, float, float, int]]:
    """(bin lower edge, mean confidence, accuracy, count) of every non-empty bin (bins are (lo, hi])."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append((float(edges[b]), float(confidence[mask].mean()), float(correct[mask].mean()), int(mask.sum())))
    return out


def _eval_split(history: Sequence[dict[str, Any]]) -> str:
    return "val" if any("val_acc" in r or "val_loss" in r for r in history) else "test"


def kept_words(epoch: int) -> str:
    """A kept stage as a sentence names it: ``the head warm-up``, ``epoch 3``."""
    return f"the {rundir.WARMUP_STAGE}" if epoch == 0 else rundir.stage_name(epoch)


def _kept_epoch(history: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> tuple[int, str] | None:
    selection = metrics.get("selection") or {}
    if not selection or not history:
        return None
    if selection.get("kept") == "best epoch" and selection.get("best_epoch") is not None:
        what = f"best {SPLIT_NAMES.get(selection.get('split'), selection.get('split'))} {selection.get('metric')}"
        return int(selection["best_epoch"]), f"kept: {kept_words(selection['best_epoch'])} ({what})"
    return int(history[-1]["epoch"]), f"kept: last epoch ({history[-1]['epoch']})"


def learning_curve_figure(history: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> Figure | None:
    """Loss and accuracy per epoch, train and validation (or test); the head warm-up as its own phase.

    ``history``: ``metrics.jsonl`` rows; ``metrics``: ``metrics.json`` (for the warm-up, the
    kept epoch and the kept model's test accuracy). None when there is no epoch to draw.
    """
    warm = metrics.get("head_warmup") or {}
    warm_rows = warm.get("history") or []
    if not history and not warm_rows:
        return None
    split = _eval_split(history)
    name = SPLIT_NAMES[split]
    fig = new_figure(10.5, 3.9)
    axes = fig.subplots(1, 2)
    width = int(warm.get("epochs") or len(warm_rows))
    epochs = [r["epoch"] for r in history]
    kept = _kept_epoch(history, metrics)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        if width and (warm_rows or warm):
            # the warm-up's epochs are cheap (cached features): drawn in the width of one epoch
            ax.axvspan(-1.05, 0.5, color="#edf7ef", lw=0, label=f"head warm-up (head only, {count(width, 'epoch')})")
            xs = [(r["epoch"] - width) / width for r in warm_rows if f"train_{key}" in r]
            ax.plot(xs, [r[f"train_{key}"] for r in warm_rows if f"train_{key}" in r], "-", color=WARM, lw=1.4,
                    marker=".", label="warm-up: train")
            value = warm.get("accuracy" if key == "acc" else "loss")
            if value is not None:
                ax.plot([0], [value], "D", color=WARM, mfc="white", ms=6,
                        label=f"after warm-up: {SPLIT_NAMES.get(warm.get('split'), warm.get('split'))}")
        elif key == "acc" and metrics.get("head_warmup_acc") is not None:
            ax.plot([0], [metrics["head_warmup_acc"]], "D", color=WARM, mfc="white", ms=6,
                    label="after head warm-up: test")
        train = [(r["epoch"], r[f"train_{key}"]) for r in history if r.get(f"train_{key}") is not None]
        held = [(r["epoch"], r[f"{split}_{key}"]) for r in history if r.get(f"{split}_{key}") is not None]
        if train:
            ax.plot(*zip(*train), "-o", color=TRAIN, ms=3.5, lw=1.8, label="train")
        if held and split == "test":  # scored each epoch, shown, never used to choose
            ax.plot(*zip(*held), "--", color=EVAL, lw=1.2, alpha=0.6,
                    label="test each epoch: for information, not used for any choice")
        elif held:
            ax.plot(*zip(*held), "-s", color=EVAL, ms=3.5, lw=1.8, label=name)
        if kept:
            ax.axvline(kept[0], color="#4a5568", ls=":", lw=1.2, label=kept[1])
        test = metrics.get("test") or {}
        if key == "acc" and kept and test.get("accuracy") is not None:  # the one test score, with its interval
            span = (test.get("intervals") or {}).get("accuracy")
            ax.plot([kept[0]], [test["accuracy"]], "*", color=TEST, ms=11, zorder=3,
                    label="test (kept model" + (", 95% CI)" if span else ")"))
            if span:
                ax.plot([kept[0]] * 2, span, "-", color=TEST, lw=1.4, zorder=2)
        ax.set_title(label.capitalize(), loc="left", fontsize=10.5)
        ax.set_xlabel("epoch" + (" (≤ 0: the head warm-up, drawn in one epoch's width)" if width and warm else ""))
        ax.set_ylabel(label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    if epochs:
        lo = -1.05 if width and warm else min(0, epochs[0]) - 0.3
        for ax in axes:
            ax.set_xlim(lo, epochs[-1] + 0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for h, lab in zip(*axes[0].get_legend_handles_labels()):
        seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(4, len(seen)), fontsize=8.5,
               frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"Learning curves: train and {name}", x=0.02, ha="left", fontsize=11)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * (len(seen) > 4), 1, 1))
    return fig


def clock_figure(stages: Sequence[dict[str, Any]], metrics: dict[str, Any]) -> Figure | None:
    """Accuracy on the eval split against wall-clock time, stage by stage (the head warm-up, then each epoch): when
    the run had a usable model, and how good. The time limit, where there was one, is drawn. None without stages."""
    split = _eval_split(stages)
    points = [(r["wall_s"], r[f"{split}_acc"], r.get("stage") or f"epoch {r['epoch']}") for r in stages
              if r.get(f"{split}_acc") is not None and r.get("wall_s") is not None]
    if not points:
        return None
    fig = new_figure(8.6, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    decoded = next((r["wall_s"] for r in stages if r.get("stage") == "decode"), None)
    if decoded:
        ax.axvspan(0, decoded, color="#edf2f7", lw=0, label="decoding")
    xs, ys, names = zip(*points)
    ax.plot(xs, ys, "-", color=EVAL, lw=1.6)
    for x, y, name in points:
        warm = name == "head_warmup"
        ax.plot([x], [y], "D" if warm else "s", color=WARM if warm else EVAL, ms=6 if warm else 4.5,
                mfc="white" if warm else EVAL, label="head warm-up (first model)" if warm else None)
    ax.plot([], [], "s", color=EVAL, ms=4.5, label=f"epochs ({SPLIT_NAMES[split]})")
    limit = (metrics.get("time_limit") or {}).get("limit_s")
    if limit:
        ax.axvline(limit, color=TEST, ls="--", lw=1.2, label=f"time limit ({limit:g} s)")
    if metrics.get("wall_s"):
        ax.axvline(metrics["wall_s"], color="#4a5568", ls=":", lw=1.2, label=f"run ended ({metrics['wall_s']:.0f} s)")
    ax.set_xlim(0, max([*xs, limit or 0, metrics.get("wall_s") or 0]) * 1.05)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel(f"{SPLIT_NAMES[split]} accuracy")
    honest_scale(ax)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Accuracy against the clock" + (": test each stage, for information, not used for any choice"
                                                  if split == "test" else ""), loc="left", fontsize=10.5)
    fig.tight_layout()
    return fig


def roc_pr_figure(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> Figure | None:
    """ROC and precision-recall curves of a two-class run (positive: class 1), with the argmax operating point.

    None unless there are two classes and both occur among the rows.
    """
    if len(classes) != 2 or not rows:
        return None
    labels, predicted, probs = prediction_arrays(rows, classes)
    y = (labels == 1).astype(np.int64)
    if y.all() or not y.any():
        return None
    curves = binary_curves(y, probs[:, 1])
    tp = int(((predicted == 1) & (y == 1)).sum())
    fp = int(((predicted == 1) & (y == 0)).sum())
    tpr, fpr = tp / y.sum(), fp / (len(y) - y.sum())
    fig = new_figure(10, 4.2)
    roc, pr = fig.subplots(1, 2)
    roc.plot(curves["fpr"], curves["tpr"], "-", color=TRAIN, lw=2,
             label=f"ROC (AUC {curves['roc_auc']:.3f})")
    roc.plot([0, 1], [0, 1], "--", color="#a0aec0", lw=1, label="chance")
    roc.plot([fpr], [tpr], "o", color=TEST, ms=8, label=f"argmax decision (p > 0.5): TPR {tpr:.2f}, FPR {fpr:.2f}")
    roc.set_xlabel("false positive rate")
    roc.set_ylabel("true positive rate (recall)")
    roc.set_title(f"ROC curve (positive class: {classes[1]})", loc="left", fontsize=10.5)
    pr.plot(curves["recall"], curves["precision"], "-", color=TRAIN, lw=2, drawstyle="steps-post",
            label=f"PR (AP {curves['average_precision']:.3f})")
    pr.axhline(curves["prevalence"], ls="--", color="#a0aec0", lw=1,
               label=f"chance (prevalence {curves['prevalence']:.2f})")
    if tp + fp:
        precision = tp / (tp + fp)
        pr.plot([tpr], [precision], "o", color=TEST, ms=8,
                label=f"argmax decision: recall {tpr:.2f}, precision {precision:.2f}")
    pr.set_xlabel("recall")
    pr.set_ylabel("precision")
    pr.set_title(f"Precision-recall curve (positive class: {classes[1]})", loc="left", fontsize=10.5)
    for ax in (roc, pr):
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.05)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if ax is pr else "lower right", fontsize=8, frameon=True)
    fig.tight_layout()
    return fig


def reliability_figure(rows: Sequence[dict[str, Any]], classes: Sequence[str], bins: int = ECE_BINS,
                       split: str = "test") -> Figure | None:
    """Reliability diagram: accuracy against confidence (the top class's probability) in ``bins`` bins.

    The ECE is in the title; the diagonal is perfect calibration; grey bars show where the
    predictions fall. None without rows.
    """
    if not rows:
        return None
    labels, predicted, probs = prediction_arrays(rows, classes)
    confidence = probs.max(axis=1)
    correct = (predicted == labels).astype(np.float64)
    found = _reliability_bins(confidence, correct, bins)
    ece = expected_calibration_error(confidence, correct, bins)
    width = 1.0 / bins
    fig = new_figure(5.4, 5.6)
    ax, share = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3.2, 1]})
    ax.bar([lo for lo, *_ in found], [acc for _, _, acc, _ in found], width=width, align="edge", color="#90b4de",
           edgecolor=TRAIN, lw=0.8, label="accuracy in the bin")
    ax.bar([lo for lo, *_ in found], [conf - acc for _, conf, acc, _ in found],
           bottom=[acc for _, _, acc, _ in found], width=width, align="edge", color=TEST, alpha=0.25, hatch="//",
           edgecolor=TEST, lw=0.8, label="gap to the bin's mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="#4a5568", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    ax.set_title(f"Reliability diagram, {SPLIT_NAMES.get(split, split)} split: ECE = {ece:.3f}\n({bins} bins, "
                 f"{len(rows)} images)", loc="left", fontsize=10.5, pad=34)
    share.bar([lo for lo, *_ in found], [n / len(rows) for *_, n in found], width=width, align="edge",
              color="#cbd5e0", edgecolor="#718096", lw=0.6)
    share.set_ylabel("share of\nimages", fontsize=9)
    share.set_xlabel("confidence (probability of the predicted class)")
    share.set_xlim(0, 1)
    share.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def crops_figure(paths: Sequence[Path], labels: Sequence[str], pre: Preprocessing, train_crop_size: int,
                 scale: tuple[float, float], region: int | None, seed: int, crops: int = 5,
                 flips: str = "h") -> Figure | None:
    """Augmented training crops as the model sees them: per image, the resized image, then ``crops`` crops.

    Crops are drawn as training draws them (RandomResizedCrop with ``scale`` inside the central
    ``region`` square, or the whole image when None, then the ``flips`` coins), at ``train_crop_size``,
    from a generator seeded with ``seed``. The first column outlines the region.
    """
    from dataclasses import replace

    import torch

    from ..data.transforms import apply_crop, decode_one, sample_crop

    if not paths:
        return None
    train_pre = replace(pre, crop_size=train_crop_size)
    generator = torch.Generator().manual_seed(seed)
    cells: list[dict[str, Any]] = []
    for path, label in zip(paths, labels):
        try:
            image = decode_one(path, pre)
        except Exception as exc:  # noqa: BLE001 - one unreadable file leaves a note
            cells.append({"caption": f"{label}\n{Path(path).name}", "note": f"cannot read\n({type(exc).__name__})"})
            cells += [{}] * crops
            continue
        height, width = image.shape[-2:]
        box = None
        if region is not None:
            side_h, side_w = min(region, height), min(region, width)
            box = (round((width - side_w) / 2), round((height - side_h) / 2), side_w, side_h)
        cells.append({"image": image.permute(1, 2, 0).numpy(), "box": box,
                      "caption": f"{label}: {Path(path).name}\n{width}x{height} (resized)"})
        for i in range(1, crops + 1):
            crop = sample_crop(image, scale, generator, region, flips)
            _, _, h, w, code = crop
            cells.append({"image": apply_crop(image, crop, train_pre).permute(1, 2, 0).numpy(),
                          "caption": f"crop {i}: {w}x{h} px\n{_SYMMETRY[code]}"})
    where = f"inside the central {region} px square (dashed)" if region is not None else "anywhere in the image"
    return image_grid(cells, crops + 1, f"Training crops: {scale[0]:g}-{scale[1]:g} of the area, {where}, "
                      f"resized to {train_crop_size} px, {FLIP_WORDS[flips]} (seed {seed})", cell_in=1.7)


FLIP_WORDS = {"h": "random horizontal flip", "hv": "random horizontal and vertical flips",
              "d4": "random rotation and flip", "none": "no flip"}  # RunConfig.flips in words


# A crop's flip bits (transforms.apply_crop: 1 mirror left-right, then 2 upside down, then 4 transpose) as what
# the eight of them do to the square.
_SYMMETRY = ("not flipped", "flipped", "upside down", "turned 180°", "transposed", "turned 90° left",
             "turned 90° right", "anti-transposed")

