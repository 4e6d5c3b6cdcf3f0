"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import TransferlabError

__all__ = ["main", "build_parser"]

# train options -> RunConfig fields (None = not given on the command line)
TRAIN_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--data", {"help": "ImageFolder root (train/ + val/ or test/), or elpv, or hotdog"}),
    ("--model", {"help": "torchvision model name (see `transferlab models`)"}),
    ("--weights", {"help": "imagenet (default), none (from scratch), a torchvision weights name "
                           "such as IMAGENET1K_V1, or a .pth/.safetensors PATH"}),
    ("--epochs", {"type": int}),
    ("--batch-size", {"type": int}),
    ("--lr", {"type": float, "help": "body learning rate"}),
    ("--head-lr-mult", {"type": float, "help": "head lr = lr x this (default 10)"}),
    ("--freeze", {"help": "none, body, or a stage name: freeze up to and including it"}),
    ("--optimizer", {"choices": ["sgd", "adamw"]}),
    ("--momentum", {"type": float}),
    ("--weight-decay", {"type": float}),
    ("--schedule", {"choices": ["cosine", "constant"]}),
    ("--warmup-epochs", {"type": float}),
    ("--label-smoothing", {"type": float}),
    ("--head-warmup-epochs", {"type": int, "help": "epochs of head-only training on cached features first"}),
    ("--image-size", {"type": int, "help": "crop size (default: the weights' own)"}),
    ("--resize-size", {"type": int, "help": "eval resize (default: the weights' own ratio)"}),
    ("--val-fraction", {"type": float, "help": "test share when DIR has only train/ (default 0.25)"}),
    ("--seed", {"type": int}),
    ("--device", {"help": "auto (default), cpu, cuda, cuda:N"}),
]


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    for flag, kwargs in TRAIN_OPTIONS:
        parser.add_argument(flag, default=None, **kwargs)
    parser.add_argument("--preset", default=None, help="default (ours) or d2l (the seed recipe exactly)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [flag[2:].replace("-", "_") for flag, _ in TRAIN_OPTIONS]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferlab",
                                     description="Fine-tune ImageNet-pretrained models on your own images.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune (or train from scratch) and write a run directory")
    _add_train_options(p)
    p.add_argument("--out", default=None, help="run directory (default runs/<data>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="with --resume: accept options that differ")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="offline demo: ELPV solar cells, MobileNetV2 fine-tuned vs. scratch")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix as JSON")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="ImageFolder root, elpv or hotdog (its test split is used)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="one JSON line per image: path, label, probabilities")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("models", help="list models, their freeze stages and where their weights are")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*'")
    return parser


def _version() -> str:
    from . import __version__

    return f"transferlab {__version__}"


def cmd_train(args: argparse.Namespace) -> int:
    from .config import RunConfig, make_config
    from .train import finetune

    overrides = _overrides(args)
    default_out = f"runs/{Path(overrides.get('data', 'hotdog')).name}-{overrides.get('model', 'mobilenet_v2')}"
    out = Path(args.out or default_out)
    saved = out / "config.json"
    if args.resume and saved.is_file():
        previous = RunConfig.load(saved)
        if args.preset:
            overrides["preset"] = args.preset
        config = RunConfig.from_dict({**previous.to_dict(), **overrides, "out": str(out)}).validate()
        diff = {k: (v, getattr(config, k)) for k, v in previous.to_dict().items()
                if k != "out" and config.to_dict()[k] != v}
        if diff and not args.force:
            changes = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise TransferlabError(f"--resume: options differ from {saved} ({changes}); "
                                   "drop them, or add --force to accept")
    else:
        if not args.resume and (out / "metrics.json").exists():
            raise TransferlabError(f"--out {out}: a finished run is already there; choose another --out "
                                   "or delete it")
        config = make_config(args.preset, **overrides, out=str(out))
    result = finetune(config, quiet=args.quiet, resume=args.resume)
    m = result.metrics
    print(f"test_acc {m['test_acc']:.4f} (best {m['best_test_acc']:.4f}) in {m['wall_s']:.1f} s; "
          f"run in {out}/")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments import demo

    demo(args.out, quiet=args.quiet)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, args.data, device=args.device, quiet=args.quiet), indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import expand_paths, load

    if args.batch_size <= 0:
        raise TransferlabError(f"--batch-size must be positive, got {args.batch_size}")
    predictor = load(args.run_dir, device=args.device)
    paths = expand_paths(args.images)
    if not paths:
        raise TransferlabError(f"no image files in {' '.join(args.images)}")
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        for path, pred in zip(chunk, predictor.predict(chunk)):
            print(json.dumps({"path": str(path), **pred}), flush=True)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import family_of, list_model_names, stage_names
    from .weights import expected_hash_prefix, hub_checkpoint_dir, imagenet_weights, packaged_file, verify_file

    names = list_model_names(args.pattern)
    if not names:
        raise TransferlabError(f"no model matches {args.pattern!r}; try `transferlab models`")
    for name in names:
        weights = imagenet_weights(name)
        where = "no ImageNet weights"
        for w in weights:
            file_name = Path(w.url).name
            if verify_file(hub_checkpoint_dir() / file_name, expected_hash_prefix(file_name)):
                where = f"{w.name}: hub cache"
                break
            if packaged_file(file_name):
                where = f"{w.name}: installed package"
                break
        else:
            if weights:
                where = f"{weights[0].name}: download"
        print(f"{name:<22} {family_of(name).name:<13} {where:<34} freeze: {' '.join(stage_names(name))}")
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .progress import setup_logging

    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except TransferlabError as exc:
        print(f"transferlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("transferlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
