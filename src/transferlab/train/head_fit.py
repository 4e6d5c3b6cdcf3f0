"""Training the head on cached body features: the features of a run, the head warm-up, a logistic probe.

A :class:`~transferlab.train.trainer.Trainer` mixin. The body runs once per image (and view); the
features are cached on disk under :func:`~transferlab.train.features.feature_key`, shared with the
ranking (:mod:`transferlab.ranking.ranker`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.batches import view_crops, view_seed
from ..data.transforms import apply_crop, center_crop
from ..files import file_digest
from ..models.model import TransferModel, folded
from .features import feature_key, run_features
from .optim import fit_head
from .probes import fit_logistic_head

__all__ = ["HeadFit"]


class HeadFit:
    """Features of a run's images and the head trained on them (a Trainer mixin)."""

    def _features(self, model: TransferModel, crop: Callable[[int], torch.Tensor], n: int,
                  key: dict[str, Any]) -> torch.Tensor:
        """Body features of ``crop(i)`` for every i < n (see :func:`~transferlab.train.features.run_features`)."""
        use_cache = self.config.feature_cache and not self.dist.enabled and self.weights.path is not None
        return run_features(model, crop, n, self.pre, self.device, self.dist, self.config.precision, self.quiet,
                            feature_key(self.config.model, self.weights_digest, **key) if use_cache else None,
                            stats=self.body_passes)

    @functools.cached_property
    def weights_digest(self) -> str:
        return file_digest(self.weights.path) if self.weights.path else "none"

    def _eval_crop_features(self, body: TransferModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Body features of the eval crops of the training images, and of each evaluation split's images."""
        data, center = self.data, {"crop": "center"}
        images = data.train_images
        train = self._features(body, lambda i: center_crop(images[i], self.pre.crop_size), len(images),
                               {"images": data.train_key, **center})
        splits = {}
        for split in ("val", "test") if data.val_images is not None else ("test",):
            crops, key = data.eval_images(split), getattr(data, f"{split}_key")
            splits[split] = self._features(body, lambda i, crops=crops: crops[i], len(crops),
                                           {"images": key, **center})
        return train, splits

    def _cache_features(self, model: TransferModel) -> None:
        """Body features of the test crops and of ``probe_views`` views of the training images.

        View 0 is the eval crop; further views are augmented crops, seeded by (seed, view).
        """
        cfg = self.config
        model = folded(model)
        images, n = self.data.train_images, len(self.data.train_images)
        center, self.eval_features = self._eval_crop_features(model)
        feats = [center]
        for view in range(1, cfg.probe_views):
            crops = view_crops(images, cfg.seed, view, cfg.crop_scale, self.crop_region, cfg.flips)
            key = {"images": self.data.train_key, "crop": "random", "seed": view_seed(cfg.seed, view),
                   "scale": list(cfg.crop_scale), "region": self.crop_region,
                   **({"flips": cfg.flips} if cfg.flips != "h" else {})}  # keys of "h" views as before
            feats.append(self._features(model, lambda i, crops=crops: apply_crop(images[i], crops[i], self.pre), n,
                                        key))
        self.train_features = feats

    def _head_logits(self, model: TransferModel, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.head(features.to(self.device)).float().cpu()


    def head_warmup(self, model: TransferModel) -> None:
        """Fit the new head on cached body features before the body moves (skipped from scratch).

        ``head_fit="adamw"``: ``head_warmup_epochs`` epochs of AdamW at ``probe_lr``; ``"logreg"``: a
        logistic regression whose L2 strength is chosen by cross-validation on the training split.
        """
        cfg = self.config
        if cfg.head_warmup_epochs <= 0 or not cfg.pretrained:
            return
        features, splits = self._eval_crop_features(folded(model))
        if cfg.head_fit == "logreg":
            c = fit_logistic_head(model.head, features, self.data.train_labels, cfg.seed,
                                  balanced=cfg.class_weights == "balanced")
            curve, how = [], f"logistic regression, C {c:g} chosen by cross-validation on train"
        else:
            curve = fit_head(model, features, self.data.train_labels, cfg.head_warmup_epochs, lr=cfg.probe_lr,
                             weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                             label_smoothing=cfg.label_smoothing, seed=cfg.seed, weight=self._class_weights())
            how, c = f"{cfg.head_warmup_epochs} epochs on cached features", None
        # the probe's score: the head on the features of the split every epoch is scored on
        block = self.score_split(self._head_logits(model, splits[self.eval_split]), self.eval_split)
        self.warmup = {"epochs": cfg.head_warmup_epochs if c is None else 0, "fit": cfg.head_fit,
                       "split": self.eval_split, "accuracy": block["accuracy"], "loss": block["nll"],
                       "history": curve, **({"C": c} if c is not None else {})}
        self.say("head warm-up (%s): %s_acc %.3f", how, self.eval_split, block["accuracy"])

    def logistic_epoch(self, model: TransferModel) -> dict[str, float]:
        """A probe's one "epoch" with ``head_fit="logreg"``: the head fitted on every cached view at once.

        The L2 strength is chosen by cross-validation on the eval-crop view alone (one row per
        image, so no image is on both sides of a fold).
        """
        start = time.perf_counter()
        labels = self.data.train_labels
        features = torch.cat(self.train_features)
        every = labels.repeat(len(self.train_features))
        c = fit_logistic_head(model.head, features, every, self.config.seed,
                              balanced=self.config.class_weights == "balanced",
                              select=(self.train_features[0], labels))
        logits = self._head_logits(model, features)
        seconds = time.perf_counter() - start
        self.say("probe: logistic regression on %d cached views, C %g chosen by cross-validation on train",
                 len(self.train_features), c)
        return {"train_loss": float(nn.functional.cross_entropy(logits, every)),
                "train_acc": float((logits.argmax(1) == every).float().mean()),
                "train_images_per_s": len(features) / max(seconds, 1e-9), "train_s": seconds, "seen": len(features)}
