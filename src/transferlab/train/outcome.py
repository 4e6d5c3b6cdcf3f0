"""What a finished run reports: the epoch kept, calibration, and the test split scored once (``metrics.json``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..errors import opt
from ..evaluation.metrics import fit_temperature, prediction_rows
from ..inference.forward import use_bf16
from ..system import environment

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["Outcome", "scale_head"]


class Outcome:
    """The end of a :class:`~transferlab.train.Trainer` run: the epoch kept, calibration, the test split once."""

    def final_metrics(self, model: TransferModel, last: tuple[int, torch.Tensor] | None) -> dict[str, Any]:
        """Keep the selected epoch, calibrate on validation if asked, score the test split once: ``metrics.json``.

        ``last``: the last epoch's test logits when the epochs were scored on test (no second pass).
        Sets ``self.predictions``, the final model on every test image.
        """
        cfg = self.config
        self.selector.restore(model.net)
        selection = self.selector.summary(self.epochs_done)
        if selection["metric"] is not None:
            self.say("keeping epoch %d of %d, the best on validation by %s%s", selection["best_epoch"],
                     self.epochs_done, selection["metric"], " (stopped early)" if selection["stopped_early"] else "")
        else:
            self.say("keeping the last epoch (no selection; %s or %s choose on a validation split)",
                     opt("select_metric"), opt("early_stopping"))
        temperature = None
        if cfg.calibrate:  # folded into the head, so the saved model predicts calibrated probabilities
            temperature = fit_temperature(self.split_logits(model, "val"), self.data.val_labels)
            scale_head(model, 1.0 / temperature)
        # every choice is made; now the test split, once
        reuse = last and last[0] == selection["best_epoch"] and not self.selector.best_state and temperature is None
        test_logits = last[1] if reuse else self.split_logits(model, "test")
        calibration = None
        if temperature is not None:
            calibration = {"temperature": temperature, "split": "val",
                           "ece_before": self.score_split(test_logits * temperature, "test")["ece"]}
        test = self.score_split(test_logits, "test")
        if calibration:
            calibration["ece_after"] = test["ece"]
            self.say("calibrated on validation: temperature %.3f, test ECE %.4f -> %.4f", calibration["temperature"],
                     calibration["ece_before"], calibration["ece_after"])
        self.predictions = prediction_rows(self.test_paths, self.data.test_labels.tolist(),
                                           test_logits.softmax(1), self.dataset.classes)
        metrics: dict[str, Any] = {
            "test_acc": test["accuracy"], "test_loss": test["nll"], "test": test,
            "selection": selection, "epochs": cfg.epochs, "epochs_trained": self.epochs_done,
            "wall_s": round(self.elapsed(), 3), **self.throughput(),
            "class_names": list(self.dataset.classes), "per_class_acc": [test["per_class"][c]["recall"]
                                                                         for c in self.dataset.classes],
            "confusion": test["confusion"]["matrix"], "weights": self.weights.describe(),
            "preprocessing": self.pre.to_dict(), "train_crop_size": self.train_pre.crop_size,
            "device": str(self.device), "precision": self.precision_name, "train_images": len(self.data.train_labels),
            "val_images": len(self.data.val_labels) if self.data.val_labels is not None else 0,
            "test_images": len(self.data.test_labels), "probe": self.probe, "processes": self.dist.world_size,
            "data_root": str(self.dataset.root), "environment": environment(),
            "test_split": {"source": self.dataset.test_source, "seed": cfg.seed, "fraction": cfg.test_fraction,
                           "files": self.dataset.test_files()},
        }
        if self.data.val_labels is not None:
            metrics["val"] = self.score_split(self.split_logits(model, "val"), "val")
            metrics["val_split"] = {"source": self.dataset.val_source, "fraction": cfg.carve_fraction}
        if calibration:
            metrics["calibration"] = calibration
        if self.ranking is not None:
            metrics["ranking"] = self.ranking.to_dict()
        if self.zero_shot is not None:
            metrics["zero_shot_acc"] = self.zero_shot
        if self.warmup is not None:
            metrics["head_warmup"] = self.warmup
            if self.warmup["split"] == "test":  # the name older readers know
                metrics["head_warmup_acc"] = self.warmup["accuracy"]
        self.console.done(metrics)
        return metrics


    @property
    def precision_name(self) -> str:
        """The run computes in: ``bf16`` (autocast) or ``fp32``, as :func:`~transferlab.inference.use_bf16` says."""
        return "bf16" if use_bf16(self.device, self.config.precision) else "fp32"

    def throughput(self) -> dict[str, Any]:
        """Training images per second; a probe's body passes per second for its features instead."""
        if self.probe:
            done = self.body_passes
            return {"feature_images_per_s": round(done["images"] / done["seconds"], 1) if done["seconds"] else None,
                    "features_cached": done["images"] == 0}
        return {"train_images_per_s": round(self.images_seen / self.train_seconds, 1) if self.train_seconds else None}


def scale_head(model: TransferModel, factor: float) -> None:
    """Multiply the head's logits by ``factor`` (a temperature folded into the saved weights)."""
    with torch.no_grad():
        model.head.weight.mul_(factor)
        if model.head.bias is not None:
            model.head.bias.mul_(factor)
