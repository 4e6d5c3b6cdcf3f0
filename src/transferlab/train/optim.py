"""Optimisation: the optimizer over parameter groups, the per-step schedule, and head-only fitting."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import TransferlabError, opt
from ..models.model import TransferModel, param_groups
from .loop import check_loss, optimizer_step

__all__ = ["build_optimizer", "build_scheduler", "fit_head"]


def build_optimizer(config: RunConfig, model: TransferModel) -> torch.optim.Optimizer:
    # a linear probe (--freeze body) trains the head alone, at the probe's rate
    lr, mult = (config.probe_lr, 1.0) if config.freeze == "body" else (config.lr, config.head_lr_mult)
    groups = param_groups(model, lr, mult, config.weight_decay, decay_1d=config.decay_1d,
                          pretrained=config.pretrained)
    if not groups:
        raise TransferlabError(f"{opt('freeze', config.freeze)}: nothing left to train")
    for group in groups:
        group["initial_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    epochs: Callable[[], int] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then cosine to zero (or constant).

    ``epochs``: the epochs the schedule spans, asked at each step (a time-limited run plans them after
    the scheduler is made); ``config.epochs`` without it.
    """
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        total = max(1, (epochs() if epochs else config.epochs) * steps_per_epoch)
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)



@torch.enable_grad()
def fit_head(model: TransferModel, features: torch.Tensor, labels: torch.Tensor, epochs: int,
             lr: float, weight_decay: float, batch_size: int, label_smoothing: float, seed: int,
             weight: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Train only the classifier on cached body features (a linear probe); return its per-epoch curve.

    ``weight``: per-class loss weights (``class_weights="balanced"``).
    """
    head = model.head
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(features) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(1, steps))
    device = head.weight.device
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                  label_smoothing=label_smoothing)
    curve = []
    for epoch in range(epochs):
        loss_sum, correct = 0.0, 0
        for step, idx in enumerate(torch.randperm(len(features), generator=generator).split(batch_size)):
            logits, y = head(features[idx].to(device)), labels[idx].to(device)
            loss = loss_fn(logits, y)
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            where = f"head warm-up epoch {epoch + 1} step {step + 1}"
            check_loss(loss.item(), where, "probe_lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_step(optimizer, where, "probe_lr")
            sched.step()
        curve.append({"epoch": epoch + 1, "train_loss": round(loss_sum / len(features), 4),
                      "train_acc": round(correct / len(features), 4)})
    return curve


