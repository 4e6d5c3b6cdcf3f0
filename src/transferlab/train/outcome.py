"""What a finished run reports: the epoch kept, calibration, and the test split scored once (``metrics.json``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..console import count
from ..errors import opt
from ..evaluation.metrics import fit_temperature, metric_block, prediction_rows
from ..system import environment

if TYPE_CHECKING:
    from ..evaluation.selection import Selector
    from ..models.model import TransferModel
    from .checkpoint import RunState
    from .context import RunContext
    from .result import PreparedData

__all__ = ["final_metrics", "throughput", "scale_head"]


def final_metrics(ctx: RunContext, model: TransferModel, data: PreparedData, state: RunState, selector: Selector,
                  split_logits: Callable[[str], torch.Tensor], last: tuple[int, torch.Tensor] | None,
                  facts: dict[str, Any], say: Callable[[str], None]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Keep the selected epoch, calibrate on validation if asked, score the test split once.

    Returns ``metrics.json`` and the final model's prediction on every test image. ``split_logits(split)``:
    the model's logits on a split's eval crops; ``last``: the last epoch's test logits when the epochs were
    scored on test (no second pass); ``facts``: what the run knows besides (``elapsed()``, ``throughput``,
    ``test_paths``, ``ranking``); ``say``: where the run's lines go.
    """
    cfg, classes = ctx.config, ctx.dataset.classes

    def score(logits: torch.Tensor, split: str) -> dict[str, Any]:
        return metric_block(logits, data.eval_labels(split), classes, split, intervals=split == "test")

    selector.restore(model.net)
    selection = selector.summary(state.epochs_done)
    if selection["metric"] is not None:
        early = " (stopped early)" if selection["stopped_early"] else ""
        if selection["best_epoch"] == 0 and not state.epochs_done:
            say("keeping the head warm-up (no epoch ran after it)")
        elif selection["best_epoch"] == 0:
            say(f"keeping the head warm-up: better on validation by {selection['metric']} than the "
                f"{count(state.epochs_done, 'epoch')} after it{early}")
        else:
            say(f"keeping epoch {selection['best_epoch']} of {state.epochs_done}, the best on validation by "
                f"{selection['metric']}{early}")
    else:
        say(f"keeping the last epoch (no selection; {opt('select_metric')} or {opt('early_stopping')} choose on a "
            "validation split)")
    temperature = None
    if cfg.calibrate:  # folded into the head, so the saved model predicts calibrated probabilities
        temperature = fit_temperature(split_logits("val"), data.val_labels)
        scale_head(model, 1.0 / temperature)
    # every choice is made; now the test split, once
    reuse = last and last[0] == selection["best_epoch"] and not selector.best_state and temperature is None
    test_logits = last[1] if reuse else split_logits("test")
    calibration = None
    if temperature is not None:
        calibration = {"temperature": temperature, "split": "val",
                       "ece_before": metric_block(test_logits * temperature, data.test_labels, classes, "test")["ece"]}
    test = score(test_logits, "test")
    if calibration:
        calibration["ece_after"] = test["ece"]
        say(f"calibrated on validation: temperature {calibration['temperature']:.3f}, test ECE "
            f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    predictions = prediction_rows(facts["test_paths"], data.test_labels.tolist(), test_logits.softmax(1), classes)
    metrics: dict[str, Any] = {
        "test_acc": test["accuracy"], "test_loss": test["nll"], "test": test,
        "selection": selection, "epochs": cfg.epochs, "epochs_trained": state.epochs_done,
        "wall_s": round(facts["elapsed"](), 3), **facts["throughput"],
        "class_names": list(classes), "per_class_acc": [test["per_class"][c]["recall"] for c in classes],
        "confusion": test["confusion"]["matrix"], "weights": ctx.weights.describe(),
        "preprocessing": ctx.pre.to_dict(), "train_crop_size": ctx.train_pre.crop_size,
        "device": str(ctx.device), "precision": ctx.precision_name, "train_images": len(data.train_labels),
        "val_images": len(data.val_labels) if data.val_labels is not None else 0,
        "test_images": len(data.test_labels), "probe": ctx.probe, "processes": ctx.dist.world_size,
        "data_root": str(ctx.dataset.root), "environment": environment(),
        "test_split": {"source": ctx.dataset.test_source, "seed": cfg.seed, "fraction": cfg.test_fraction,
                       "files": ctx.dataset.test_files()},
    }
    if data.val_labels is not None:
        metrics["val"] = score(split_logits("val"), "val")
        metrics["val_split"] = {"source": ctx.dataset.val_source, "fraction": cfg.carve_fraction}
    if calibration:
        metrics["calibration"] = calibration
    if facts.get("ranking") is not None:
        metrics["ranking"] = facts["ranking"].to_dict()
    if state.zero_shot is not None:
        metrics["zero_shot_acc"] = state.zero_shot
    if state.warmup is not None:
        metrics["head_warmup"] = state.warmup
        if state.warmup["split"] == "test":  # the name older readers know
            metrics["head_warmup_acc"] = state.warmup["accuracy"]
    return metrics, predictions


def throughput(ctx: RunContext, state: RunState, body_passes: dict[str, Any]) -> dict[str, Any]:
    """Training images per second; a probe's body passes per second for its features instead."""
    if ctx.probe:
        done = body_passes
        return {"feature_images_per_s": round(done["images"] / done["seconds"], 1) if done["seconds"] else None,
                "features_cached": done["images"] == 0}
    return {"train_images_per_s": round(state.images_seen / state.train_seconds, 1) if state.train_seconds else None}


def scale_head(model: TransferModel, factor: float) -> None:
    """Multiply the head's logits by ``factor`` (a temperature folded into the saved weights)."""
    with torch.no_grad():
        model.head.weight.mul_(factor)
        if model.head.bias is not None:
            model.head.bias.mul_(factor)
