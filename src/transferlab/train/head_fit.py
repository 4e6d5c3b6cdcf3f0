"""Training the head on cached body features: the features of a run, the head warm-up, a logistic probe.

Plain functions of a :class:`~transferlab.train.context.RunContext`. The body runs once per image
(and view); the features are cached on disk under :func:`~transferlab.train.features.feature_key`,
shared with the ranking (:mod:`transferlab.ranking.ranker`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.batches import view_crops, view_seed
from ..data.transforms import apply_crop, center_crop
from ..evaluation.metrics import metric_block
from ..models.model import TransferModel, folded
from .context import RunContext
from .features import feature_key, run_features
from .optim import fit_head
from .probes import fit_logistic_head
from .result import PreparedData

__all__ = ["features", "eval_crop_features", "view_features", "head_logits", "head_warmup", "logistic_epoch"]


def features(ctx: RunContext, model: TransferModel, crop: Callable[[int], torch.Tensor], n: int,
             key: dict[str, Any], stats: dict[str, Any] | None = None) -> torch.Tensor:
    """Body features of ``crop(i)`` for every i < n (see :func:`~transferlab.train.features.run_features`).

    ``stats`` counts the images the body really ran on, and the seconds (cached ones cost none).
    """
    cfg = ctx.config
    use_cache = cfg.feature_cache and not ctx.dist.enabled and ctx.weights.path is not None
    return run_features(model, crop, n, ctx.pre, ctx.device, ctx.dist, cfg.precision, ctx.quiet,
                        feature_key(cfg.model, ctx.weights_digest, **key) if use_cache else None, stats=stats)


def eval_crop_features(ctx: RunContext, body: TransferModel, data: PreparedData,
                       stats: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Body features of the eval crops of the training images, and of each evaluation split's images."""
    center = {"crop": "center"}
    images = data.train_images
    train = features(ctx, body, lambda i: center_crop(images[i], ctx.pre.crop_size), len(images),
                     {"images": data.train_key, **center}, stats)
    splits = {}
    for split in ("val", "test") if data.val_images is not None else ("test",):
        crops, key = data.eval_images(split), getattr(data, f"{split}_key")
        splits[split] = features(ctx, body, lambda i, crops=crops: crops[i], len(crops), {"images": key, **center},
                                 stats)
    return train, splits


def view_features(ctx: RunContext, model: TransferModel, data: PreparedData,
                  stats: dict[str, Any] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A probe's features: ``probe_views`` views of the training images, and the val/test eval crops.

    View 0 is the eval crop; further views are augmented crops, seeded by (seed, view).
    """
    cfg = ctx.config
    model = folded(model)
    images, n = data.train_images, len(data.train_images)
    center, splits = eval_crop_features(ctx, model, data, stats)
    views = [center]
    for view in range(1, cfg.probe_views):
        crops = view_crops(images, cfg.seed, view, cfg.crop_scale, ctx.crop_region, cfg.flips)
        key = {"images": data.train_key, "crop": "random", "seed": view_seed(cfg.seed, view),
               "scale": list(cfg.crop_scale), "region": ctx.crop_region,
               **({"flips": cfg.flips} if cfg.flips != "h" else {})}  # keys of "h" views as before
        views.append(features(ctx, model, lambda i, crops=crops: apply_crop(images[i], crops[i], ctx.pre), n, key,
                              stats))
    return views, splits


def head_logits(ctx: RunContext, model: TransferModel, feats: torch.Tensor) -> torch.Tensor:
    """The head's logits on body features (on the CPU, in float)."""
    with torch.inference_mode():
        return model.head(feats.to(ctx.device)).float().cpu()


def head_warmup(ctx: RunContext, model: TransferModel, data: PreparedData, weight: torch.Tensor | None = None,
                stats: dict[str, Any] | None = None, features_done: Callable[[int], None] | None = None,
                ) -> tuple[dict[str, Any] | None, str, dict[str, Any] | None]:
    """Fit the new head on cached body features before the body moves: (the warm-up's record, a line to show,
    its metric block on the eval split).

    ``head_fit="adamw"``: ``head_warmup_epochs`` epochs of AdamW at ``probe_lr``; ``"logreg"``: a
    logistic regression whose L2 strength is chosen by cross-validation on the training split.
    Skipped (None) from scratch or with no warm-up epochs. ``weight``: the loss's class weights;
    ``features_done(n)``: called once the body features of the ``n`` images are there (a stage of the run).
    """
    cfg = ctx.config
    if cfg.head_warmup_epochs <= 0 or not cfg.pretrained:
        return None, "", None
    train, splits = eval_crop_features(ctx, folded(model), data, stats)
    if features_done is not None:
        features_done(len(train) + sum(len(f) for f in splits.values()))
    if cfg.head_fit == "logreg":
        c = fit_logistic_head(model.head, train, data.train_labels, cfg.seed, balanced=cfg.class_weights == "balanced")
        curve, how = [], f"logistic regression, C {c:g} chosen by cross-validation on train"
    else:
        curve = fit_head(model, train, data.train_labels, cfg.head_warmup_epochs, lr=cfg.probe_lr,
                         weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                         label_smoothing=cfg.label_smoothing, seed=cfg.seed, weight=weight)
        how, c = f"{cfg.head_warmup_epochs} epochs on cached features", None
    # the probe's score: the head on the features of the split every epoch is scored on
    split = ctx.eval_split
    block = metric_block(head_logits(ctx, model, splits[split]), data.eval_labels(split), ctx.dataset.classes, split)
    record = {"epochs": cfg.head_warmup_epochs if c is None else 0, "fit": cfg.head_fit, "split": split,
              "accuracy": block["accuracy"], "loss": block["nll"], "history": curve,
              **({"C": c} if c is not None else {})}
    return record, f"head warm-up ({how}): {split}_acc {block['accuracy']:.3f}", block


def logistic_epoch(ctx: RunContext, model: TransferModel, views: list[torch.Tensor],
                   labels: torch.Tensor) -> tuple[dict[str, float], str]:
    """A probe's one "epoch" with ``head_fit="logreg"``: the head fitted on every cached view at once.

    The L2 strength is chosen by cross-validation on the eval-crop view alone (one row per
    image, so no image is on both sides of a fold). Returns the epoch's statistics and a line to show.
    """
    start = time.perf_counter()
    every_view = torch.cat(views)
    every = labels.repeat(len(views))
    c = fit_logistic_head(model.head, every_view, every, ctx.config.seed,
                          balanced=ctx.config.class_weights == "balanced", select=(views[0], labels))
    logits = head_logits(ctx, model, every_view)
    seconds = time.perf_counter() - start
    stats = {"train_loss": float(nn.functional.cross_entropy(logits, every)),
             "train_acc": float((logits.argmax(1) == every).float().mean()),
             "train_images_per_s": len(every_view) / max(seconds, 1e-9), "train_s": seconds, "seen": len(every_view)}
    line = f"probe: logistic regression on {len(views)} cached views, C {c:g} chosen by cross-validation on train"
    return stats, line
