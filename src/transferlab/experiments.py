"""Experiments built from runs: fine-tune vs. scratch, and the offline demo."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import RunConfig, make_config
from .reports import format_table
from .train import RunResult, finetune

__all__ = ["DEMO", "compare_scratch", "demo", "comparison_rows"]

log = logging.getLogger(__name__)

# The demo's budget: both arms on 2 CPU cores within a few minutes. Measured choices
# (README, "The demo"): 160 px crops (ELPV cells are 300 px), 3 epochs per arm.
DEMO: dict[str, Any] = {"data": "elpv", "model": "mobilenet_v2", "weights": "imagenet", "epochs": 3,
                        "image_size": 160}


def compare_scratch(config: RunConfig, out: str | Path | None, quiet: bool = False,
                    resume: bool = False) -> dict[str, RunResult]:
    """Train ``config`` from its pretrained weights and the same network from scratch."""
    arms = {"finetune": config, "scratch": replace(config, weights="none")}
    results = {}
    for name, arm in arms.items():
        arm = replace(arm, out=str(Path(out) / name) if out else None)
        log.info("== %s: %s, weights %s", name, arm.model, arm.weights)
        results[name] = finetune(arm, quiet=quiet, resume=resume)
    return results


def comparison_rows(results: dict[str, RunResult]) -> list[dict[str, Any]]:
    return [{"run": name, "weights": r.config.weights, "epochs": r.config.epochs,
             "test_acc": round(r.metrics["test_acc"], 4), "best_test_acc": round(r.metrics["best_test_acc"], 4),
             "wall_s": round(r.metrics["wall_s"], 1), "train_img_per_s": r.metrics["train_images_per_s"]}
            for name, r in results.items()]


def demo(out: str | Path = "runs/demo", quiet: bool = False, **overrides: Any) -> dict[str, RunResult]:
    """Fine-tune MobileNetV2 on ELPV and train it from scratch; print a side-by-side table."""
    config = make_config(**{**DEMO, **overrides})
    size = f"{config.image_size} px" if config.image_size else "the weights' own"
    print(f"transferlab demo: {config.data} with {config.model} ({config.weights} vs. scratch), "
          f"{config.epochs} epochs per arm, {size} crops, batch {config.batch_size}; runs in {out}/", flush=True)
    results = compare_scratch(config, out, quiet=quiet)
    print(format_table(comparison_rows(results)))
    return results
