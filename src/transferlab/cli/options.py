"""The training options of the command line: each flag, its help, and the RunConfig field it sets."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..config import (
    BN_STATS,
    CLASS_WEIGHTS,
    CROP_REGIONS,
    FLIPS,
    HEAD_FITS,
    PRECISIONS,
    SELECT_METRICS,
    RunConfig,
)

__all__ = ["DATA_HELP", "TRAIN_OPTIONS", "DEFAULTS", "RANK_OPTIONS", "add_train_options", "train_overrides",
           "renamed_notice"]

DATA_HELP = "DIR (an ImageFolder root: train/ plus val/ or test/, or class folders), elpv or hotdog"

def _parse_head_map(text: str) -> dict[str, list[str | int]]:
    """'hotdog=934;pizza=pizza,963' -> {'hotdog': [934], 'pizza': ['pizza', 963]}."""
    mapping: dict[str, list[str | int]] = {}
    for pair in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, targets = pair.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"--head-map: expected CLASS=IMAGENET, got {pair!r}")
        items = [t.strip().strip('"') for t in targets.split(",") if t.strip()]
        mapping[name.strip()] = [int(t) if t.isdigit() else t for t in items]
    return mapping


# train options -> RunConfig fields (None = not given on the command line)
TRAIN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--data", {"help": f"{DATA_HELP}; required for a new run"}),
    ("--model", {"help": "torchvision or timm model name; timm:NAME picks timm where both have it "
                         "(see `transferlab models`); auto: rank the offline backbones first (`transferlab rank`)"}),
    ("--weights", {"help": "imagenet, none (from scratch), a torchvision weights name such as IMAGENET1K_V1 "
                           "(a timm model's weights follow the tag in its name), or a .pth/.safetensors/.bin "
                           "PATH"}),
    ("--epochs", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--lr", {"type": float, "help": "body learning rate"}),
    ("--head-lr-mult", {"type": float, "help": "head lr = lr x this"}),
    ("--freeze", {"help": "none, body, or a stage name: freeze up to and including it"}),
    ("--optimizer", {"choices": ["sgd", "adamw"]}),
    ("--momentum", {"type": float}),
    ("--weight-decay", {"type": float}),
    ("--schedule", {"choices": ["cosine", "constant"]}),
    ("--warmup-epochs", {"type": float}),
    ("--label-smoothing", {"type": float}),
    ("--head-warmup-epochs", {"type": int, "help": "epochs of head-only training on cached features first"}),
    ("--probe-lr", {"type": float, "help": "learning rate of the head when it trains alone on cached features "
                                          "(--freeze body, and the head warm-up)"}),
    ("--head-fit", {"choices": list(HEAD_FITS),
                    "help": "how the head trains on cached features (the warm-up, and --freeze body): adamw "
                            "(epochs at --probe-lr) or logreg (a logistic regression, its L2 strength chosen by "
                            "cross-validation on the training split)"}),
    ("--bn-stats", {"choices": list(BN_STATS),
                    "help": "keep: BatchNorm normalises with the pretrained statistics while training; "
                            "update: with each batch's (PyTorch's default; always from scratch)"}),
    ("--crop-region", {"choices": list(CROP_REGIONS),
                       "help": "where training crops are drawn: center (inside the eval crop's square) or "
                               "full (the whole image, as RandomResizedCrop)"}),
    ("--flips", {"choices": list(FLIPS),
                 "help": "symmetries of the training crops: h (a horizontal flip), hv (vertical too), d4 "
                         "(all 8 rotations and reflections: images with no up, e.g. cells, slides) or none"}),
    ("--head-init", {"choices": ["xavier", "imagenet"],
                     "help": "new head: Xavier (default) or rows of related ImageNet classes (--head-map)"}),
    ("--head-map", {"type": _parse_head_map, "help": "class=IMAGENET[,IMAGENET...] pairs separated by ';', "
                                                     "by index or name, e.g. 'hotdog=934;not_hotdog='"}),
    ("--image-size", {"type": int, "help": "eval crop size (default: the weights' own)"}),
    ("--train-image-size", {"type": int, "help": "training crop size (default: --image-size); lower trains "
                                                 "faster, evaluation stays at --image-size"}),
    ("--probe-views", {"type": int, "help": "with --freeze body: cached feature views per image (1 = the eval "
                                            "crop only; more adds augmented crops)"}),
    ("--resize-size", {"type": int, "help": "eval resize (default: the weights' own ratio)"}),
    ("--test-fraction", {"type": float, "help": "test share of a bare class-folder tree (one without val/ or "
                                                "test/)"}),
    ("--val-fraction", {"type": float, "help": "validation share carved from train, for every choice a run makes "
                                               "(0: none; --select-metric, --early-stopping and --calibrate carve "
                                               "0.15 unless DIR has val/ beside test/)"}),
    ("--select-metric", {"choices": list(SELECT_METRICS),
                         "help": "keep the epoch best on validation by this metric (default: the last epoch)"}),
    ("--early-stopping", {"type": int, "metavar": "PATIENCE",
                          "help": "stop after PATIENCE epochs without a better validation score (0: off)"}),
    ("--time-limit", {"metavar": "DURATION",
                      "help": "plan the run to end within DURATION (300, 90s, 5m, 1h30m): the head warm-up is saved as "
                              "a model at once, then the epochs that fit, re-planned after each; carves a validation "
                              "split and keeps the stage best on it"}),
    ("--class-weights", {"choices": list(CLASS_WEIGHTS),
                         "help": "balanced: weight the loss by inverse class frequency"}),
    ("--calibrate", {"action": "store_true", "help": "fit a temperature on validation; the saved model predicts "
                                                     "calibrated probabilities"}),
    ("--skip-bad-images", {"action": "store_true", "help": "drop images that cannot be decoded (one warning "
                                                            "each, then a count) instead of stopping"}),
    ("--seed", {"type": int}),
    ("--device", {"help": "auto (default), cpu, cuda, cuda:N"}),
    ("--precision", {"choices": list(PRECISIONS),
                     "help": "auto (default): bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere; "
                             "fp32 or bf16 force one"}),
    ("--checkpoint-every", {"type": int, "help": "also write checkpoint.pt every N optimizer steps (default 0: "
                                                 "after each epoch only)"}),
    ("--deterministic", {"action": "store_true", "help": "deterministic kernels and a fixed thread count: a resumed "
                                                        "run ends bit-identical to an uninterrupted one (on CPU)"}),
]


DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _shown_default(name: str) -> str:
    """The default of a train option, as ``-h`` shows it (the ``default`` preset's, which presets may change)."""
    value = DEFAULTS.get(name)
    if name == "data":
        return ""
    if value is None:
        return " (default: from the weights)" if name.endswith("size") else ""
    return f" (default: {value})"


# what `transferlab rank` takes of them: what the ranked features and the timed epochs depend on
RANK_OPTIONS = ("--epochs", "--batch-size", "--freeze", "--image-size", "--train-image-size", "--resize-size",
                "--test-fraction", "--val-fraction", "--skip-bad-images", "--seed", "--device", "--precision")


def add_train_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """The train options (or those in ``only``), with their defaults in the help."""
    for flag, kwargs in TRAIN_OPTIONS:
        if only is not None and flag not in only:
            continue
        name = flag[2:].replace("-", "_")
        shown = "" if kwargs.get("action") == "store_true" else _shown_default(name)
        parser.add_argument(flag, default=None, **{**kwargs, "help": kwargs.get("help", "") + shown})
    parser.add_argument("--preset", default=None, help="default (ours) or d2l (the seed recipe exactly); explicit "
                                                       "options win over it (default: default)")


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [flag[2:].replace("-", "_") for flag, _ in TRAIN_OPTIONS]
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return values


def renamed_notice(values: dict[str, Any]) -> None:
    """One line when ``--val-fraction`` is given alone: it sized the test split before the roles had names.

    Called once the options are valid, so a bad value still gets its error as the only line.
    """
    if "val_fraction" in values and "test_fraction" not in values:
        print("transferlab: note: --val-fraction now sizes the validation split carved from train; the test split "
              "it sized before is --test-fraction", file=sys.stderr)
