"""The training options of the command line: each flag, its help, and the RunConfig field it sets."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
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

__all__ = ["DATA_HELP", "DATA_KINDS", "GROUPS", "TRAIN_OPTIONS", "TRAIN_COMMAND_OPTIONS", "DEFAULTS", "RANK_OPTIONS",
           "add_train_options", "train_overrides", "renamed_notice"]

DATA_KINDS = "DIR (an ImageFolder root), elpv or hotdog"  # what --data takes, as an error names it
DATA_HELP = ("DIR, elpv or hotdog. DIR is an ImageFolder root: train/ and val/ (val/ is the test split here, not "
             "validation as timm and Hugging Face read it), train/ and test/, train/ val/ and test/ (val/ is "
             "validation), or bare class folders (split by --test-fraction); validation is carved from train/ "
             "when a run needs one and DIR has no val/ beside test/")

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


# The groups of `train -h` (and of `study -h` and `rank -h`, which take some of the options), in order.
GROUPS = {
    "config": "where the settings start: our defaults, or a preset's; every option below wins over them",
    "data": "the images, their splits and the crops (see --data)",
    "model": "the backbone, its weights and its new head",
    "schedule": "the fine-tune: epochs, optimizer, learning rates",
    "head warm-up": "the new head trained alone on cached features first (and --freeze body runs)",
    "validation": "a split carved from train for every choice a run makes; test is scored once on the final model",
    "output": "the run directory and what is printed",
    "hardware": "where and how the run computes",
}

# train options -> RunConfig fields (None = not given on the command line): (group, flag, argparse keywords).
# A keyword "shown" is what -h says of a default that is no plain value (None: the option's default is not shown).
TRAIN_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("data", "--data", {"help": f"{DATA_HELP}; required for a new run"}),
    ("data", "--image-size", {"type": int, "help": "eval crop size", "shown": "the weights' own"}),
    ("data", "--train-image-size", {"type": int, "shown": "--image-size",
                                    "help": "training crop size; lower trains faster, evaluation stays at "
                                            "--image-size"}),
    ("data", "--resize-size", {"type": int, "help": "eval resize", "shown": "the weights' own ratio"}),
    ("data", "--crop-region", {"choices": list(CROP_REGIONS),
                               "help": "where training crops are drawn: center (inside the eval crop's square) or "
                                       "full (the whole image, as RandomResizedCrop)"}),
    ("data", "--flips", {"choices": list(FLIPS),
                         "help": "symmetries of the training crops: h (a horizontal flip), hv (vertical too), d4 "
                                 "(all 8 rotations and reflections: images with no up, e.g. cells, slides) or "
                                 "none"}),
    ("data", "--test-fraction", {"type": float, "help": "test share of a bare class-folder tree (one without val/ "
                                                        "or test/)"}),
    ("data", "--skip-bad-images", {"action": "store_true", "help": "drop images that cannot be decoded (one "
                                                                    "warning each, then a count) instead of "
                                                                    "stopping"}),
    ("model", "--model", {"help": "auto (the default): rank the offline backbones (`transferlab rank`) and train "
                                  "the strongest that fits --time-limit, else the time a mobilenet_v2 run would "
                                  "take; or a torchvision or timm model name; timm:NAME picks timm where both "
                                  "have it (see `transferlab models`)"}),
    ("model", "--weights", {"help": "imagenet, none (from scratch), a torchvision weights name such as "
                                    "IMAGENET1K_V1 (a timm model's weights follow the tag in its name), or a "
                                    ".pth/.safetensors/.bin PATH"}),
    ("model", "--freeze", {"help": "none, body, or a stage name: freeze up to and including it"}),
    ("model", "--bn-stats", {"choices": list(BN_STATS),
                             "help": "keep: BatchNorm normalises with the pretrained statistics while training; "
                                     "update: with each batch's, as PyTorch does (always so from scratch)"}),
    ("model", "--head-init", {"choices": ["xavier", "imagenet"],
                              "help": "the new head: Xavier-initialised, or rows of related ImageNet classes "
                                      "(--head-map)"}),
    ("model", "--head-map", {"type": _parse_head_map, "help": "class=IMAGENET[,IMAGENET...] pairs separated by "
                                                              "';', by index or name, e.g. "
                                                              "'hotdog=934;not_hotdog='"}),
    ("schedule", "--epochs", {"type": int, "help": "epochs of fine-tuning, after the head warm-up"}),
    ("schedule", "--batch-size", {"type": int}),
    ("schedule", "--lr", {"type": float, "help": "body learning rate"}),
    ("schedule", "--head-lr-mult", {"type": float, "help": "head lr = lr x this"}),
    ("schedule", "--optimizer", {"choices": ["sgd", "adamw"]}),
    ("schedule", "--momentum", {"type": float}),
    ("schedule", "--weight-decay", {"type": float}),
    ("schedule", "--schedule", {"choices": ["cosine", "constant"]}),
    ("schedule", "--warmup-epochs", {"type": float, "help": "epochs of linear learning-rate warm-up at the start "
                                                            "of the fine-tune"}),
    ("schedule", "--label-smoothing", {"type": float}),
    ("schedule", "--class-weights", {"choices": list(CLASS_WEIGHTS),
                                     "help": "balanced: weight the loss by inverse class frequency"}),
    ("schedule", "--time-limit", {"metavar": "DURATION",
                                  "help": "plan the run to end within DURATION (300, 90s, 5m, 1h30m): the head "
                                          "warm-up is saved as a model at once, then the epochs that fit "
                                          "(up to --epochs, else 10), re-planned after each; carves a validation "
                                          "split and keeps the stage best on it; with --model auto the ranking "
                                          "picks what fits"}),
    ("schedule", "--seed", {"type": int, "help": "seeds the splits, the head and the batches"}),
    ("head warm-up", "--head-warmup-epochs", {"type": int, "help": "epochs of head-only training on cached "
                                                                   "features first"}),
    ("head warm-up", "--probe-lr", {"type": float, "help": "learning rate of the head when it trains alone on "
                                                           "cached features (--freeze body, and the head "
                                                           "warm-up)"}),
    ("head warm-up", "--head-fit", {"choices": list(HEAD_FITS),
                                    "help": "how the head trains on cached features (the warm-up, and --freeze "
                                            "body): adamw (epochs at --probe-lr) or logreg (a logistic "
                                            "regression, its L2 strength chosen by cross-validation on the "
                                            "training split)"}),
    ("head warm-up", "--probe-views", {"type": int, "help": "with --freeze body: cached feature views per image "
                                                            "(1 = the eval crop only; more adds augmented crops)"}),
    ("validation", "--val-fraction", {"type": float,
                                      "help": "validation share carved from train, for every choice a run makes "
                                              "(0: none; --select-metric, --early-stopping and --calibrate carve "
                                              "0.15 unless DIR has val/ beside test/)"}),
    ("validation", "--select-metric", {"choices": list(SELECT_METRICS), "shown": "the last epoch",
                                       "help": "keep the epoch best on validation by this metric"}),
    ("validation", "--early-stopping", {"type": int, "metavar": "PATIENCE",
                                        "help": "stop after PATIENCE epochs without a better validation score "
                                                "(0: off)"}),
    ("validation", "--calibrate", {"action": "store_true", "help": "fit a temperature on validation; the saved "
                                                                   "model predicts calibrated probabilities"}),
    ("output", "--checkpoint-every", {"type": int, "help": "also write checkpoint.pt every N optimizer steps (0: "
                                                           "after each epoch only)"}),
    ("hardware", "--device", {"help": "auto, cpu, cuda, cuda:N"}),
    ("hardware", "--precision", {"choices": list(PRECISIONS),
                                 "help": "auto: bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere; fp32 "
                                         "or bf16 force one"}),
    ("hardware", "--deterministic", {"action": "store_true", "help": "deterministic kernels and a fixed thread "
                                                                     "count: a resumed run ends bit-identical to "
                                                                     "an uninterrupted one (on CPU)"}),
]


DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _dest(flag: str) -> str:
    """``--batch-size`` -> ``batch_size``, the RunConfig field it sets."""
    return flag[2:].replace("-", "_")


def _shown_default(name: str, kwargs: dict[str, Any]) -> str:
    """The default of a train option as ``-h`` shows it, once (the ``default`` preset's, which presets may change):
    nothing for a switch, ``--data``, or a default that is no value and has no ``shown`` words."""
    if kwargs.get("action") == "store_true" or name == "data":
        return ""
    value = kwargs.get("shown", DEFAULTS.get(name))
    return "" if value is None else f"(default: {value})"


def _help(name: str, kwargs: dict[str, Any]) -> str:
    """The option's help with its default after it."""
    return " ".join(part for part in (kwargs.get("help", ""), _shown_default(name, kwargs)) if part)


# what `transferlab rank` takes of them: what the ranked features and the timed epochs depend on
RANK_OPTIONS = ("--epochs", "--batch-size", "--freeze", "--image-size", "--train-image-size", "--resize-size",
                "--test-fraction", "--val-fraction", "--skip-bad-images", "--seed", "--device", "--precision")


PRESET_OPTION = ("config", "--preset", {"help": "default (ours) or d2l (the seed recipe exactly)",
                                         "shown": "default"})


# what `train` adds to the train options: its run directory, how it reuses one, and how it runs
TRAIN_COMMAND_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("config", "--config", {"default": None, "metavar": "FILE",
                            "help": "start from FILE's settings (YAML or JSON, such as a run's config.json): "
                                    "they win over --preset, the options given here win over them; the file's "
                                    "out is ignored (the run goes to --out)"}),
    ("config", "--print-config", {"action": "store_true",
                                  "help": "print the resolved config (the JSON --config reads) and exit without "
                                          "training"}),
    ("output", "--out", {"default": None, "help": "run directory", "shown": "runs/<data>-<model>"}),
    ("output", "--resume", {"action": "store_true", "help": "continue the run in --out from its last checkpoint "
                                                            "(--data not needed)"}),
    ("output", "--force", {"action": "store_true", "help": "with --resume: accept options that differ"}),
    ("output", "--overwrite", {"action": "store_true", "help": "train again over a finished or interrupted run in "
                                                               "--out"}),
    ("output", "--quiet", {"action": "store_true", "help": "no progress lines or bars; the summary still prints"}),
    ("hardware", "--nproc", {"type": int, "default": None, "shown": "one process",
                             "help": "train on N local processes through torchrun (DDP); --batch-size stays the "
                                     "global batch"}),
]


def add_train_options(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                      own: Sequence[tuple[str, str, dict[str, Any]]] = ()) -> None:
    """The train options (or those in ``only``), ``--preset`` and a command's ``own`` options, in their
    :data:`GROUPS` (a group with none of them is left out), each default in the help once.

    ``own`` options are the command's, not RunConfig fields: their keywords are argparse's, but for ``shown``.
    """
    fields = [(g, f, {**k, "default": None}) for g, f, k in (*TRAIN_OPTIONS, PRESET_OPTION)
              if only is None or f in only or f == "--preset"]
    entries = [*fields, *own]
    for group_name, about in GROUPS.items():
        members = [(flag, kwargs) for g, flag, kwargs in entries if g == group_name]
        group = parser.add_argument_group(group_name, about) if members else None
        for flag, kwargs in members:
            keywords = {k: v for k, v in kwargs.items() if k not in ("help", "shown")}
            group.add_argument(flag, help=_help(_dest(flag), kwargs), **keywords)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig fields given on the command line."""
    names = [_dest(flag) for _, flag, _ in TRAIN_OPTIONS]
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def renamed_notice(values: dict[str, Any]) -> None:
    """One line when ``--val-fraction`` is given alone: it sized the test split before the roles had names.

    Called once the options are valid, so a bad value still gets its error as the only line.
    """
    if "val_fraction" in values and "test_fraction" not in values:
        print("transferlab: note: --val-fraction now sizes the validation split carved from train; the test split "
              "it sized before is --test-fraction", file=sys.stderr)
