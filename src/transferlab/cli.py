"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import BN_STATS, CROP_REGIONS, PRECISIONS, RunConfig
from .errors import TransferlabError

__all__ = ["main", "build_parser"]

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
    ("--model", {"help": "torchvision model name (see `transferlab models`)"}),
    ("--weights", {"help": "imagenet, none (from scratch), a torchvision weights name "
                           "such as IMAGENET1K_V1, or a .pth/.safetensors PATH"}),
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
    ("--bn-stats", {"choices": list(BN_STATS),
                    "help": "keep: BatchNorm normalises with the pretrained statistics while training; "
                            "update: with each batch's (PyTorch's default; always from scratch)"}),
    ("--crop-region", {"choices": list(CROP_REGIONS),
                       "help": "where training crops are drawn: center (inside the eval crop's square) or "
                               "full (the whole image, as RandomResizedCrop)"}),
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
    ("--val-fraction", {"type": float, "help": "test share when DIR has only train/ (default 0.25)"}),
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


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _shown_default(name: str) -> str:
    """The default of a train option, as ``-h`` shows it (the ``default`` preset's, which presets may change)."""
    value = _DEFAULTS.get(name)
    if name == "data":
        return ""
    if value is None:
        return " (default: from the weights)" if name.endswith("size") else ""
    return f" (default: {value})"


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    for flag, kwargs in TRAIN_OPTIONS:
        name = flag[2:].replace("-", "_")
        shown = "" if kwargs.get("action") == "store_true" else _shown_default(name)
        parser.add_argument(flag, default=None, **{**kwargs, "help": kwargs.get("help", "") + shown})
    parser.add_argument("--preset", default=None, help="default (ours) or d2l (the seed recipe exactly); explicit "
                                                       "options win over it (default: default)")


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
    p.add_argument("--out", default=None, help="run directory (default: runs/<data>-<model>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                                                         "(--data not needed)")
    p.add_argument("--force", action="store_true", help="with --resume: accept options that differ")
    p.add_argument("--overwrite", action="store_true", help="train again over a finished or interrupted run in "
                                                            "--out")
    p.add_argument("--nproc", type=int, default=None,
                   help="train on N local processes through torchrun (DDP); --batch-size stays the global batch "
                        "(default: one process)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("demo", help="offline demo: ELPV solar cells, MobileNetV2 fine-tuned vs. scratch")
    p.add_argument("--out", default="runs/demo", help="(default: runs/demo)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix as JSON")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help=f"{DATA_HELP} (its test split is used)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="one JSON line (or CSV row) per image: path, label, probabilities")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--format", choices=["json", "csv"], default="json",
                   help="json: one object per line (default); csv: path,label,<one column per class>")
    p.add_argument("--tta", action="store_true",
                   help="average over center, flipped center and 4 corner crops (6x slower)")

    p = sub.add_parser("export", help="write the model as ONNX or TorchScript (+ model.json), checked against PyTorch")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    p.add_argument("--out", default=None, help="model file (default RUN_DIR/model.onnx or RUN_DIR/model.ts); "
                                               "the JSON goes next to it with the suffix .json")

    p = sub.add_parser("serve", help="web page and JSON API that classify uploaded images")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free port")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image accepted, in pixels (default: $TRANSFERLAB_MAX_PIXELS, else 89478485, the "
                        "limit of every image transferlab reads)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--allowed-hosts", default=None,
                   help="comma-separated Host names the server answers, or '*' (default: the loopback names when "
                        "--host is a loopback address, else any)")

    p = sub.add_parser("models", help="list models, their freeze stages and where their weights are")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*' (default: *)")

    p = sub.add_parser("cache", help="show or clear what transferlab keeps on disk")
    p.add_argument("--clear", nargs="?", const="all", default=None, metavar="KIND",
                   help="delete a kind of cache (decoded, features, datasets, downloads, weights) or all of them but "
                        "weights, which is torch's own hub cache "
                        "(the default KIND, all)")

    p = sub.add_parser("study", help="run variants of one config over seeds; write report.md/.html")
    p.add_argument("--study", default="recipe", help="a built-in study (see --list; 'seed' is the old name of "
                                                     "'recipe') or a .yaml/.json FILE (default: recipe)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: seed, seed+1, ... (default 3)")
    _add_train_options(p)
    p.add_argument("--out", default=None, help="study directory (default runs/study-<study>-<data>-<model>); "
                                               "finished runs in it are skipped")
    p.add_argument("--list", action="store_true", help="show the built-in studies and their variants")
    p.add_argument("--quiet", action="store_true")
    return parser


def _version() -> str:
    from . import __version__

    return f"transferlab {__version__}"


def _worker_argv(args: argparse.Namespace, out: Path) -> list[str]:
    """The train command line that ``args`` came from, without --nproc (what each launched process runs)."""
    argv = ["train"]
    for dest, value in vars(args).items():
        if dest in ("command", "nproc", "out") or value is None or value is False:
            continue
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, dict):  # --head-map
            argv += [flag, ";".join(f"{k}={','.join(map(str, v))}" for k, v in value.items())]
        else:
            argv += [flag, str(value)]
    return [*argv, "--out", str(out)]


def cmd_train(args: argparse.Namespace) -> int:
    import logging
    import os
    import shlex

    from . import rundir
    from .config import make_config
    from .distributed import RESUME_ENV, check_global_batch, context, launch
    from .train import TrainingDiverged, TrainingInterrupted, finetune

    ctx = context()
    if not ctx.is_main:  # rank 0 speaks for every process
        logging.getLogger("transferlab").setLevel(logging.ERROR)
    if args.nproc is not None and args.nproc < 1:
        raise TransferlabError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc is not None and "LOCAL_RANK" in os.environ:
        raise TransferlabError("--nproc: already started by torchrun; drop --nproc (--nproc-per-node sets the count)")
    overrides = _overrides(args)
    out = _train_out(args, overrides)
    if args.resume and (out / rundir.CONFIG).is_file() or "data" not in overrides:
        if args.preset:
            overrides["preset"] = args.preset
        config = rundir.resume_config(out, overrides)
    else:
        config = make_config(args.preset, **overrides, out=str(out))
    if args.nproc and args.nproc > 1:
        check_global_batch(config.batch_size, args.nproc)
        again = f"transferlab train --nproc {args.nproc} --out {shlex.quote(str(out))} --resume"
        return launch(args.nproc, _worker_argv(args, out), again)
    try:
        result = finetune(config, quiet=args.quiet, resume=args.resume, force=args.force, overwrite=args.overwrite)
    except TrainingInterrupted as exc:
        if ctx.is_main:
            again = os.environ.get(RESUME_ENV) or (
                f"torchrun <the same options> -m transferlab train --out {shlex.quote(str(out))} --resume"
                if ctx.enabled else f"transferlab train --out {shlex.quote(str(out))} --resume")
            hint = f"; resume with: {again}" if exc.run_dir else ""
            print(f"transferlab: {exc}{hint}", file=sys.stderr, flush=True)
        return exc.exit_code
    except TrainingDiverged:
        if not ctx.is_main:  # every process diverged at the same step; rank 0 says so
            return 2
        raise
    except TransferlabError as exc:
        if ctx.is_main:
            raise
        if os.environ.get(RESUME_ENV):  # --nproc: one machine, where rank 0 meets the same error
            return 2
        raise TransferlabError(f"rank {ctx.rank}: {exc}") from None
    m = result.metrics
    if ctx.is_main:
        print(f"test_acc {m['test_acc']:.4f} (best {m['best_test_acc']:.4f}) in {m['wall_s']:.1f} s; "
              f"run in {out}/")
    return 0


def _train_out(args: argparse.Namespace, overrides: dict[str, Any]) -> Path:
    """The run directory of ``train``: --out, else runs/<data>-<model>; a new run needs --data."""
    if "data" not in overrides:
        if not args.resume:
            raise TransferlabError(f"--data is required: {DATA_HELP}")
        if not args.out:
            raise TransferlabError("--resume: give --out RUN_DIR, the run to continue")
    if args.out:
        return Path(args.out)
    return Path(f"runs/{Path(overrides['data']).name}-{overrides.get('model', _DEFAULTS['model'])}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments import demo

    demo(args.out, quiet=args.quiet)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference import evaluate_run

    print(json.dumps(evaluate_run(args.run_dir, args.data, device=args.device, quiet=args.quiet), indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from .inference import expand_paths, load

    if args.batch_size <= 0:
        raise TransferlabError(f"--batch-size must be positive, got {args.batch_size}")
    predictor = load(args.run_dir, device=args.device)
    paths = expand_paths(args.images)
    if not paths:
        raise TransferlabError(f"no image files in {' '.join(args.images)}")
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.format == "csv" else None
    if writer:
        writer.writerow(["path", "label", *predictor.classes, "error"])
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start:start + args.batch_size]
        preds = predictor.predict(chunk, tta=args.tta, batch_size=args.batch_size, errors="report")
        for path, pred in zip(chunk, preds):
            failed += "error" in pred
            if writer:
                probs = pred.get("probabilities", {})
                writer.writerow([str(path), pred.get("label", ""), *(probs.get(c, "") for c in predictor.classes),
                                 pred.get("error", "")])
            else:
                print(json.dumps({"path": str(path), **pred}, allow_nan=False))
        sys.stdout.flush()
    if failed:
        raise TransferlabError(f"{failed} of {len(paths)} images could not be read (their rows say why); the others "
                               "were predicted")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    result = export_model(args.run_dir, args.format, out=args.out)
    sizes = " and ".join(map(str, result.batch_sizes))
    print(f"wrote {result.path} and {result.metadata_path}; max abs difference from PyTorch "
          f"{result.max_abs_diff:.1e} on batches of {sizes}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.run_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_pixels=args.max_pixels, device=args.device,
          allowed_hosts=args.allowed_hosts.split(",") if args.allowed_hosts else None)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import find_models
    from .weights import find_local_file

    models = find_models(args.pattern)
    if not models:
        raise TransferlabError(f"no model matches {args.pattern!r}; try `transferlab models`")
    rows = []
    for m in models:
        where = "none (--weights none or PATH)"
        for w in m["weights"]:
            found = find_local_file(w["file"])
            if found is not None:
                where = f"{w['name']}: local ({'hub cache' if found[1] == 'hub-cache' else found[1]})"
                break
        else:
            if m["weights"]:
                where = f"{m['weights'][0]['name']}: download"
        rows.append((m["name"], m["family"], where, " ".join(m["stages"])))
    header = ("MODEL", "FAMILY", "IMAGENET WEIGHTS", "FREEZE STAGES")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .files import CACHE_KINDS, cache_usage, clear_cache

    if args.clear is not None:
        kinds = [k for k in CACHE_KINDS if k != "weights"] if args.clear == "all" else [args.clear]
        if not set(kinds) <= set(CACHE_KINDS):
            raise TransferlabError(f"--clear {args.clear}: choose one of {', '.join(CACHE_KINDS)} or all")
        for kind in kinds:
            freed = clear_cache(kind)
            print(f"cleared {kind}: {freed / 1e6:.1f} MB")
        return 0
    usage = cache_usage()
    width = max(len(k) for k in usage)
    print(f"{'KIND':<{width}}  {'SIZE':>10}  {'FILES':>6}  WHERE")
    for kind, (path, size, files) in usage.items():
        print(f"{kind:<{width}}  {size / 1e6:>7.1f} MB  {files:>6}  {path}")
    total = sum(size for _, size, _ in usage.values())
    print(f"{'total':<{width}}  {total / 1e6:>7.1f} MB")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .config import make_config
    from .experiments import run_study
    from .studies import list_studies, load_study

    if args.list:
        print(list_studies())
        return 0
    if args.seeds < 1:
        raise TransferlabError(f"--seeds must be at least 1, got {args.seeds}")
    study = load_study(args.study)
    overrides = _overrides(args)
    if "data" not in overrides and "data" not in study.base:
        raise TransferlabError(f"--data is required: {DATA_HELP}")
    config = make_config(args.preset, **{**study.base, **overrides})
    out = args.out or f"runs/study-{study.name}-{Path(config.data).name}-{config.model}"
    seeds = [config.seed + k for k in range(args.seeds)]
    from .loop import TrainingInterrupted

    try:
        run_study(study, config, out, seeds, quiet=args.quiet, echo=lambda line: print(line, flush=True))
    except TrainingInterrupted as exc:
        print(f"transferlab: {exc}; resume with the same `transferlab study` command (finished runs are skipped, "
              "the interrupted one resumes)", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "export": cmd_export, "serve": cmd_serve,
            "models": cmd_models, "cache": cmd_cache, "study": cmd_study}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .progress import close_bars, setup_logging

    setup_logging(quiet=getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except TransferlabError as exc:
        close_bars()
        print(f"transferlab: error: {exc.cli_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        close_bars()
        print("transferlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
