"""Fine-tune against scratch training, and the offline demo that shows the difference."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import RunConfig, make_config
from ..console import count, interval_text
from ..ranking.result import Ranking
from ..reporting.common import format_table
from ..train.result import RunResult
from .finetuning import choose_model, finetune

__all__ = ["DEMO", "compare_scratch", "comparison_rows", "comparison_note", "demo"]

log = logging.getLogger(__name__)


# The demo's budget: both arms on 2 CPU cores in under 5 minutes (README, "The demo"):
# 2 epochs per arm on 160 px crops (about 2.5x faster per image than 224 px on 2 cores;
# evaluating at 224 px after training at 160 px measured lower, 0.817 vs 0.824).
DEMO: dict[str, Any] = {"data": "elpv", "model": "mobilenet_v2", "weights": "imagenet", "epochs": 2,
                        "image_size": 160}


def compare_scratch(config: RunConfig, out: str | Path | None, quiet: bool = False,
                    resume: bool = False, ranking: Ranking | None = None) -> dict[str, RunResult]:
    """Train ``config`` from its pretrained weights and the same network from scratch (``model="auto"``: the
    ranking's pick, for both arms; ``ranking``: the one that picked ``config.model``, to record)."""
    if ranking is None:
        config, ranking = choose_model(config, out, quiet)
    arms = {"finetune": config, "scratch": replace(config, weights="none")}
    results = {}
    for name, arm in arms.items():
        arm = replace(arm, out=str(Path(out) / name) if out else None)
        log.info("== %s: %s, weights %s", name, arm.model, arm.weights)
        results[name] = finetune(arm, quiet=quiet, resume=resume, ranking=ranking)
    return results


def comparison_rows(results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """One row per arm: the test split's metrics of the model each arm kept (nothing chosen on test)."""
    rows = []
    for name, r in results.items():
        test = r.metrics.get("test", {})
        rows.append({"run": name, "weights": r.config.weights, "epochs": r.config.epochs,
                     "test_acc": r.metrics["test_acc"],
                     "95% CI": interval_text((test.get("intervals") or {}).get("accuracy")) or "-",
                     "balanced_acc": test.get("balanced_accuracy"),
                     "macro_f1": test.get("macro_f1"), "roc_auc": test.get("roc_auc"),
                     "wall_s": round(r.metrics["wall_s"], 1), "train_img_per_s": r.metrics.get("train_images_per_s")})
    return rows


def comparison_note(results: dict[str, RunResult]) -> str | None:
    """Fine-tune minus scratch in test accuracy, paired over the same test images (95 % bootstrap interval),
    and what always answering the most frequent class scores; None without both arms' predictions."""
    from ..evaluation.intervals import paired_accuracy

    tuned, scratch = results.get("finetune"), results.get("scratch")
    found = paired_accuracy([(tuned.predictions, scratch.predictions)]) if tuned and scratch else None
    if found is None:
        return None
    lo, hi = found["interval"]
    verdict = "separates" if found["separates"] else "does not separate"
    text = (f"fine-tune minus scratch: {100 * found['difference']:+.1f} points of test accuracy (95% CI "
            f"{100 * lo:+.1f} to {100 * hi:+.1f}, paired over the same {found['images']} test images): the "
            f"interval {verdict} the two")
    base = (tuned.metrics.get("test") or {}).get("baseline")
    if base:
        text += f"; always answering {base['class']} would score {base['accuracy']:.4f}"
    return text


def demo(out: str | Path = "runs/demo", quiet: bool = False, **overrides: Any) -> dict[str, RunResult]:
    """Fine-tune MobileNetV2 on ELPV and train it from scratch; print a side-by-side table."""
    config = make_config(**{**DEMO, **overrides})
    config, ranking = choose_model(config, out, quiet, echo=lambda text: print(text, flush=True))
    train_px = config.train_image_size or config.image_size
    size = f"{train_px} px training" if train_px else "the weights' own size for training"
    print(f"transferlab demo: {config.data} with {config.model} ({config.weights} vs. scratch), "
          f"{count(config.epochs, 'epoch')} per arm, {size} crops, batch {config.batch_size}; runs in {out}/",
          flush=True)
    results = compare_scratch(config, out, quiet=quiet, ranking=ranking)
    print(format_table(comparison_rows(results)))
    note = comparison_note(results)
    if note:
        print(note)
    return results
