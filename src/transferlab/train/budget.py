"""A run against the clock (``time_limit``): what fits, planned from measured costs and re-planned as it goes.

The head warm-up always runs: it is the run's first usable model, saved at once. Then one training
step is timed on a copy of the model, and the epochs that fit before the limit (less a reserve for
the final scoring and the report) are planned; the learning-rate schedule spans them. After every
epoch the plan is checked against that epoch's real time, and an epoch that would end past the
limit is not started. The plan and what happened go into ``metrics.json`` (``time_limit``).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import TYPE_CHECKING, Any

import torch

from ..inference.forward import autocast

if TYPE_CHECKING:
    from ..models.model import TransferModel
    from .context import RunContext
    from .result import PreparedData

__all__ = ["time_step", "plan_epochs", "plan_run", "last_stage_s", "next_epoch_fits", "describe",
           "RESERVE_SHARE", "REPORT_S", "TIMED_IMAGES", "WARMUP_STEPS", "TIMED_STEPS"]

RESERVE_SHARE = 0.03  # of the limit, kept besides the estimated final scoring and report
REPORT_S = 4.0  # seconds the report takes on a small CPU (figures drawn, images decoded)
TIMED_IMAGES = 8  # a timed step runs on this many images (scaled to the batch): per image, flat from here up on a CPU
WARMUP_STEPS = 1  # untimed steps first: a new model's first step pays for lazy set-up (kernels chosen, memory laid out)
TIMED_STEPS = 1  # then steps timed one by one; a step's time is their median
FORWARD_SHARE = 1 / 3  # a forward pass costs about a third of a training step (forward + backward + update)


def time_step(model: TransferModel, crop: int, batch: int, device: torch.device, precision: str) -> float:
    """Seconds one training step of ``batch`` images at ``crop`` px takes: a copy of the model (its frozen
    layers and BatchNorm mode as the run has them) steps on :data:`TIMED_IMAGES` images, :data:`WARMUP_STEPS`
    untimed, then :data:`TIMED_STEPS` timed; their median, scaled to ``batch``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's draws stay its own
        return _time_step(model, crop, batch, device, precision)


def _time_step(model: TransferModel, crop: int, batch: int, device: torch.device, precision: str) -> float:
    copy_ = copy.deepcopy(model).train()
    params = [p for p in copy_.net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.0)
    n = max(1, min(batch, TIMED_IMAGES))
    images = torch.rand(n, 3, crop, crop, device=device).to(memory_format=torch.channels_last)
    seconds = []
    for _ in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        with autocast(device, precision):
            loss = copy_.net(images).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[WARMUP_STEPS:]) * batch / n


def plan_epochs(limit_s: float, elapsed_s: float, wanted: int, steps: int, step_s: float, eval_images: int,
                test_images: int, batch: int, must_train: bool) -> dict[str, Any]:
    """The epochs that fit in what is left of ``limit_s``, and why (a dict, as ``metrics.json`` records it).

    An epoch costs ``steps`` training steps plus scoring the ``eval_images``; the reserve is the final scoring
    of the ``test_images``, the report and :data:`RESERVE_SHARE` of the limit. ``must_train``: there is no
    model yet (no warm-up), so one epoch runs even where none fits.
    """
    per_image = step_s / max(batch, 1) * FORWARD_SHARE
    epoch_s = steps * step_s + eval_images * per_image
    reserve_s = test_images * per_image + REPORT_S + RESERVE_SHARE * limit_s
    left = limit_s - elapsed_s - reserve_s
    fits = max(0, math.floor(left / epoch_s)) if epoch_s > 0 else wanted
    epochs = min(wanted, fits)
    if epochs == 0 and must_train:
        epochs, why = 1, "no epoch fits, but there is no model without one"
    elif epochs == 0:
        why = "no epoch fits: the head warm-up's model is the run's"
    elif epochs < wanted:
        why = f"{fits} of the {wanted} epochs asked for fit"
    else:
        why = f"all {wanted} epochs fit" if wanted > 1 else "the one epoch asked for fits"
    return {"limit_s": round(limit_s, 1), "planned_at_s": round(elapsed_s, 1), "step_s": round(step_s, 3),
            "epoch_s": round(epoch_s, 1), "reserve_s": round(reserve_s, 1), "wanted_epochs": wanted,
            "epochs": epochs, "why": why}


def plan_run(ctx: RunContext, model: TransferModel, data: PreparedData, steps: int, elapsed_s: float,
             must_train: bool) -> dict[str, Any]:
    """:func:`plan_epochs` for a run: its step timed on a copy of ``model`` (a probe's head epochs on cached
    features cost next to nothing; each is checked against the clock as it ends)."""
    cfg = ctx.config
    batch = cfg.batch_size // ctx.dist.world_size
    step_s = 0.0 if ctx.probe else time_step(model, ctx.train_pre.crop_size, batch, ctx.device, cfg.precision)
    return plan_epochs(cfg.time_limit, elapsed_s, cfg.epochs, steps, step_s, len(data.eval_labels(ctx.eval_split)),
                       len(data.test_labels), batch, must_train)


def last_stage_s(rows: list[dict[str, Any]]) -> float:
    """Seconds the last stage row took (``metrics.jsonl`` rows, each with its ``wall_s``)."""
    return rows[-1]["wall_s"] - (rows[-2]["wall_s"] if len(rows) > 1 else 0.0)


def next_epoch_fits(plan: dict[str, Any], elapsed_s: float, last_epoch_s: float) -> bool:
    """Whether one more epoch, as long as the last one took, ends before the limit less the reserve."""
    return elapsed_s + last_epoch_s + plan["reserve_s"] <= plan["limit_s"]


def describe(plan: dict[str, Any]) -> str:
    """The plan in one line, as the run prints it."""
    why = f" ({plan['limit_why']})" if plan.get("limit_why") else ""
    return (f"time limit {plan['limit_s']:g} s{why}: {plan['planned_at_s']:g} s spent so far; a training step "
            f"takes {plan['step_s']:.2f} s, an epoch about {plan['epoch_s']:.0f} s; planning "
            f"{plan['epochs']} epoch{'s' if plan['epochs'] != 1 else ''} ({plan['why']}; {plan['reserve_s']:.0f} s "
            "kept for the final scoring and the report)")
