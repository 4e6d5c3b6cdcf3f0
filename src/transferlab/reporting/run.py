"""The report of one run: ``RUN/report.html``, one self-contained file, from the run directory's files alone.

It holds the metrics table, the kept epoch and why, calibration and the head warm-up; the
learning curves; the confusion matrix and per-class table; for two classes the ROC and
precision-recall curves; a reliability diagram; the training crops as the model sees them;
the most confident mistakes as the eval crops the model saw; the config and the environment.
Without matplotlib it holds the tables only. The figure functions are shared with notebooks
(``RunResult``) and, for the confusion matrix and the mistakes grid, with the study report.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, rundir
from ..config import crop_region_px, defaults
from ..console import interval_text
from ..errors import TransferlabError, first_line
from ..files import atomic_write_text, readable, readable_tree
from ..ranking.result import Ranking
from ..system import environment
from .common import REPORT_CSS, html_image, html_table
from .figures import FIGURES_HINT, MISTAKES_SHOWN, confusion_figure, confusion_matrix, mistakes_figure, png, pyplot
from .run_figures import (
    ECE_BINS,
    FLIP_WORDS,
    SPLIT_NAMES,
    clock_figure,
    crops_figure,
    kept_words,
    learning_curve_figure,
    reliability_figure,
    roc_pr_figure,
)

if TYPE_CHECKING:
    from ..data.datasets import Dataset

__all__ = ["write_run_report", "summary_html", "learning_curve_figure", "confusion_figure", "mistakes_figure",
           "metric_rows", "per_class_rows", "run_notes", "CROP_IMAGES"]

CROP_IMAGES = 4  # training images in the crops grid, one row each
_CSS = "tr:first-child td{font-weight:normal}h3{margin-top:1.2em}"  # on top of the study report's style


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def metric_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """The headline metrics, one row each, one column per evaluated split (validation, then test with its 95 %
    intervals), then the majority-class baseline on the test images; old runs: accuracy and loss."""
    names = {"images": "images", "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
             "macro_f1": "macro F1", "roc_auc": "ROC AUC", "average_precision": "average precision", "nll": "NLL",
             "ece": f"ECE ({ECE_BINS} bins)"}
    columns: dict[str, dict[str, str]] = {}
    for split in ("val", "test"):
        block = metrics.get(split)
        if isinstance(block, dict) and "accuracy" in block:
            spans = block.get("intervals") or {}
            columns[SPLIT_NAMES[split] + (" (95% CI)" if spans else "")] = {
                key: _num(block[key]) + (f" ({interval_text(spans[key])})" if spans.get(key) else "")
                for key in names if key in block}
            base = block.get("baseline")
            if base:  # what answering one class always would score on the same images
                columns[f"baseline: always {readable(base['class'])}"] = {
                    "images": _num(block.get("images")),
                    "accuracy": f"{_num(base['accuracy'])} ({interval_text(base['accuracy_interval'])})",
                    "balanced_accuracy": _num(base["balanced_accuracy"])}
    if not columns and metrics.get("test_acc") is not None:
        columns["test"] = {"images": _num(metrics.get("test_images")), "accuracy": _num(metrics["test_acc"]),
                           "nll": _num(metrics.get("test_loss"))}
    keys = [key for key in names if any(key in column for column in columns.values())]
    return [{"metric": names[key], **{title: column.get(key, "") for title, column in columns.items()}}
            for key in keys]


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """Precision, recall, F1 and support per class on the test split (old runs: from the confusion matrix)."""
    per_class = (metrics.get("test") or {}).get("per_class")
    if per_class:
        return [{"class": name, **{k: _num(v.get(k)) for k in ("precision", "recall", "f1")},
                 "support": _num(v.get("support"))} for name, v in per_class.items()]
    found = confusion_matrix(metrics)
    if found is None:
        return []
    matrix, classes = found
    rows = []
    for i, name in enumerate(classes):
        support, predicted, hit = sum(matrix[i]), sum(r[i] for r in matrix), matrix[i][i]
        precision = hit / predicted if predicted else None
        recall = hit / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if support else None)
        rows.append({"class": name, "precision": _num(precision), "recall": _num(recall), "f1": _num(f1),
                     "support": str(support)})
    return rows


def run_notes(metrics: dict[str, Any], history: Sequence[dict[str, Any]]) -> list[str]:
    """One line each: which epoch was kept and why, calibration, the head warm-up."""
    notes = []
    sel = metrics.get("selection")
    if sel:
        split = SPLIT_NAMES.get(sel.get("split"), sel.get("split"))
        stage = kept_words(sel.get("best_epoch"))
        best = f"the best {split} {sel.get('metric')} ({_num(sel.get('best_value'))})"
        if sel.get("kept") == "best epoch":
            text = f"Selection: kept {stage}, {best}"
        elif sel.get("metric"):
            text = f"Selection: kept the last epoch; {best} was at {stage}"
        else:
            text = "Selection: kept the last epoch (no selection metric)"
        if sel.get("stopped_early"):
            last = history[-1]["epoch"] if history else "?"
            text += f"; stopped early after epoch {last} of {metrics.get('epochs', '?')}"
        notes.append(text + ".")
    cal = metrics.get("calibration")
    if cal:
        notes.append(f"Calibration: temperature scaling, T = {_num(cal.get('temperature'), 3)} fitted on the "
                     f"{SPLIT_NAMES.get(cal.get('split'), cal.get('split'))} split; test ECE "
                     f"{_num(cal.get('ece_before'))} before, {_num(cal.get('ece_after'))} after.")
    warm = metrics.get("head_warmup")
    if warm:
        how = (f"the new head fitted as a logistic regression on the frozen body's features (C = {warm.get('C')}, "
               "chosen by cross-validation on train)" if warm.get("fit") == "logreg" else
               f"{warm.get('epochs')} epochs training the new head alone on the frozen body's features")
        notes.append(f"Head warm-up: {how}, then {SPLIT_NAMES.get(warm.get('split'), warm.get('split'))} accuracy "
                     f"{_num(warm.get('accuracy'))}, loss {_num(warm.get('loss'))}.")
    elif metrics.get("head_warmup_acc") is not None:
        notes.append(f"Head warm-up: test accuracy {_num(metrics['head_warmup_acc'])} after training the new head "
                     "alone.")
    return notes


def summary_html(metrics: dict[str, Any], history: Sequence[dict[str, Any]]) -> str:
    """A compact HTML fragment: the headline metrics, the learning curves and the confusion matrix (a notebook's
    view of a run). Without matplotlib: the table only."""
    parts = ["<div class='transferlab-run'>", html_table(metric_rows(metrics))]
    parts += [f"<p>{html.escape(note)}</p>" for note in run_notes(metrics, history)[:1]]
    if pyplot() is not None:
        figures = [(learning_curve_figure(history, metrics), "learning curves"),
                   (confusion_figure(metrics), "confusion matrix")]
        images = [html_image(png(fig, dpi=80), alt) for fig, alt in figures if fig is not None]
        parts.append("<div style='display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start'>"
                     + "".join(images) + "</div>")
    else:
        parts.append(f"<p>({html.escape(FIGURES_HINT)})</p>")
    return "\n".join(parts + ["</div>"])


# --------------------------------------------------------------------------- the report file


def _resolve_dataset(run_dir: Path, config: dict[str, Any],
                     metrics: dict[str, Any]) -> tuple[Dataset | None, str | None]:
    """The run's data, found again from its files without downloading anything, or why not."""
    from ..data.datasets import dataset_for
    from ..files import cache_path

    spec = metrics.get("data_root") or config.get("data")
    if not spec:
        return None, "the run's files name no data"
    if spec == "hotdog" and not (cache_path("datasets") / "hotdog").is_dir():
        return None, "the hotdog dataset is not downloaded on this machine"
    try:
        return dataset_for(rundir.RunDir(run_dir).config(), data=str(spec), validation=False), None
    except Exception as exc:  # noqa: BLE001 - the report is written without its images
        return None, f"cannot read the data at {spec} ({first_line(exc)})"


def _crop_examples(dataset: Dataset, seed: int, n: int = CROP_IMAGES) -> list[tuple[Path, str]]:
    """``n`` training images drawn with ``seed``, the classes in turn."""
    rng = random.Random(seed)
    pools = [[p for p, label in zip(dataset.train.paths, dataset.train.labels) if label == i]
             for i in range(len(dataset.classes))]
    picks: list[tuple[Path, str]] = []
    while len(picks) < n and any(pools):
        for name, pool in zip(dataset.classes, pools):
            if pool and len(picks) < n:
                picks.append((pool.pop(rng.randrange(len(pool))), name))
    return picks


def _section(key: str, title: str, *body: str) -> list[str]:
    return [f"<h2 id='{key}'>{html.escape(title)}</h2>", *body]


def _note(text: str, key: str = "") -> str:
    return f"<p class='muted note'{f' id={key!r}' if key else ''}>{html.escape(text)}</p>"


def _image_sections(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any],
                    rows: list[dict[str, Any]] | None, dataset: Dataset | None) -> list[str]:
    """Training crops and the most confident mistakes, or one note saying why the images are not there."""
    from ..data.transforms import Preprocessing

    if not metrics.get("preprocessing"):
        return [_note("Images not shown: metrics.json records no preprocessing.", "no-images")]
    pre = Preprocessing.from_dict(metrics["preprocessing"])
    reason = None
    if dataset is None:
        dataset, reason = _resolve_dataset(run_dir, config, metrics)
    parts: list[str] = []
    if dataset is not None:
        region = crop_region_px(config.get("crop_region", "center"), pre.crop_size)
        train_size = metrics.get("train_crop_size") or config.get("train_image_size") or pre.crop_size
        picks = _crop_examples(dataset, int(config.get("seed", 0)))
        flips = config.get("flips", "h")
        fig = crops_figure([p for p, _ in picks], [c for _, c in picks], pre, int(train_size),
                           tuple(config.get("crop_scale", (0.6, 1.0))), region, int(config.get("seed", 0)),
                           flips=flips)
        if fig is not None:
            parts += _section("crops", "Training crops", html_image(png(fig), "training crops"),
                              _note("Drawn as training draws them (same crop rule, scale, size and "
                                    f"{FLIP_WORDS[flips]}), from the run's seed; not the crops of any one epoch."))
    root = dataset.root if dataset is not None else Path(metrics["data_root"]) if metrics.get("data_root") else None
    mistakes = rows is not None and root is not None and root.is_dir()
    if mistakes:
        fig = mistakes_figure(rows, root, pre, MISTAKES_SHOWN)
        wrong = sum(1 for r in rows if not int(float(r["correct"])))
        body = html_image(png(fig), "most confident mistakes") if fig is not None else \
            "<p>No misclassified test images.</p>"
        parts += _section("mistakes", f"Most confident mistakes ({wrong} of {len(rows)} test images wrong)", body)
    elif rows is not None and reason is None:
        reason = f"the data root {root} is not there" if root else "metrics.json records no data root"
    if reason:
        parts.insert(0, _note(f"{'Training crops' if mistakes else 'Images'} not shown: {reason}.", "no-images"))
    return parts


def _title(config: dict[str, Any]) -> str:
    data = Path(str(config.get("data", "?"))).name or str(config.get("data"))
    return f"Run report: {config.get('model', '?')} on {data}"


def _facts(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    classes = metrics.get("class_names") or []
    weights = metrics.get("weights") or {}
    source = weights.get("name") if isinstance(weights, dict) else weights
    source = source or ("none (from scratch)" if config.get("weights") == "none" else config.get("weights"))
    facts = [f"{config.get('model')} (weights: {source}) on {config.get('data')}: {len(classes)} classes "
             f"({', '.join(map(str, classes[:12]))}{', ...' if len(classes) > 12 else ''})"]
    images = [f"{metrics['train_images']} train" if metrics.get("train_images") is not None else None]
    images += [f"{metrics[s]['images']} {SPLIT_NAMES[s]}" for s in ("val", "test")
               if isinstance(metrics.get(s), dict) and metrics[s].get("images") is not None]
    if not isinstance(metrics.get("test"), dict) and metrics.get("test_images") is not None:
        images.append(f"{metrics['test_images']} test")
    if any(images):
        facts.append("images: " + ", ".join(i for i in images if i))
    wall = metrics.get("wall_s")
    precision = f" ({metrics['precision']})" if metrics.get("precision") else ""
    facts.append(f"{len(history)} of {config.get('epochs', '?')} epochs on {metrics.get('device', '?')}{precision}"
                 + (f" in {wall:.0f} s" if isinstance(wall, (int, float)) else "")
                 + f"; batch {config.get('batch_size')}, lr {config.get('lr')}, freeze {config.get('freeze')}")
    facts.append(f"run directory: {run_dir}")
    return facts


def _predictions_sections(metrics: dict[str, Any], rows: list[dict[str, Any]] | None) -> list[str]:
    classes = metrics.get("class_names") or []
    if rows is None:
        return [_note(f"This run has no {rundir.PREDICTIONS} (older runs): the ROC, precision-recall, reliability "
                      "and mistakes figures need it.", "no-predictions")]
    if not rows or pyplot() is None:
        return []
    parts = []
    fig = roc_pr_figure(rows, classes)
    if fig is not None:
        parts += _section("roc", "ROC and precision-recall curves", html_image(png(fig), "ROC and PR curves"))
    fig = reliability_figure(rows, classes)
    if fig is not None:
        parts += _section("reliability", "Reliability diagram", html_image(png(fig), "reliability diagram"))
    return parts


def _environment_rows(metrics: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    env = metrics.get("environment")
    title = "Environment (of the run)"
    if not isinstance(env, dict):
        env, title = environment(), "Environment (where this report was written; the run recorded none)"
    return title, [{"": k, "value": str(v)} for k, v in env.items()]


def _ranked(ranking: Ranking) -> str:
    if ranking.ranked_images:
        return f"a class-stratified sample of {ranking.ranked_images} of the {ranking.train_images} training images"
    return f"the {ranking.train_images} training images"


def _ranking_section(values: dict[str, Any]) -> list[str]:
    """How the backbone was chosen (``--model auto``): the ranking table, on the training split only."""
    ranking = Ranking.from_dict(values)
    return _section("ranking", "Backbone ranking (--model auto)",
                    _note(f"Scored on {_ranked(ranking)} only ({ranking.folds}-fold cross-validation on "
                          f"cached eval-crop features), in {ranking.seconds:.0f} s; picked {ranking.picked}: "
                          f"{ranking.reason}" + (f" (the time limit: {ranking.limit_s:g} s, "
                                                 f"{ranking.limit_why or 'from --time-limit'})"
                                                 if ranking.limit_s else "") + "."),
                    html_table(ranking.rows()))


def _clock_text(stages: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
    """The stages' times in words, and a time limit's plan against what happened."""
    warm = next((r for r in stages if r.get("stage") == "head_warmup"), None)
    text = f"The first usable model (the head warm-up) was saved at {warm['wall_s']:.0f} s. " if warm else ""
    if metrics.get("model_stage"):
        stage = metrics["model_stage"]
        text += f"The model kept is {stage if stage.startswith('epoch') else 'the ' + stage}'s. "
    plan = metrics.get("time_limit")
    if isinstance(plan, dict):
        stopped = (f"; stopped after epoch {plan['stopped_after']}, the next would have ended past the limit"
                   if plan.get("stopped_after") else "")
        why = f" ({plan['limit_why']})" if plan.get("limit_why") else ""
        text += (f"Time limit {plan.get('limit_s'):g} s{why}: at {plan.get('planned_at_s'):g} s a training step took "
                 f"{plan.get('step_s'):.2f} s, so {plan.get('epochs')} of {plan.get('wanted_epochs')} epochs were "
                 f"planned ({plan.get('why')}); {plan.get('epochs_run')} ran{stopped}; the run ended at "
                 f"{plan.get('wall_s'):.0f} s.")
    return text.strip()


def config_rows(config: dict[str, Any]) -> list[dict[str, str]]:
    """The settings a run changed from the defaults (``make_config()``'s), each with its default."""
    base = {**defaults(), "preset": "default"}  # no preset named is the default one
    skip = {"data", "out", "extra"}  # what the run read and where it wrote (the report's first lines say)
    return [{"setting": key, "this run": json.dumps(value), "default": json.dumps(base[key])}
            for key, value in config.items() if key in base and key not in skip and value != base[key]]


def _config_html(config: dict[str, Any]) -> str:
    """What differs from the defaults first; every setting (``config.json``) folded below it."""
    esc = html.escape
    rows = config_rows(config)
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(config.items()))
    changed = html_table(rows) if rows else "<p>Every setting is the default.</p>"
    return (f"<p>Changed from the defaults ({len(rows)} of {len(config)} settings):</p>{changed}"
            f"<details><summary>All settings (config.json; <code>transferlab train --config</code> takes it)"
            f"</summary><pre>{{\n{esc(lines)}\n}}</pre></details>")


def _report_html(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], history: list[dict[str, Any]],
                 rows: list[dict[str, Any]] | None, dataset: Dataset | None,
                 stages: list[dict[str, Any]] | None = None) -> str:
    esc = html.escape
    plotted = pyplot() is not None
    title = _title(config)
    facts = "".join(f"<li>{esc(f)}</li>" for f in _facts(run_dir, config, metrics, history))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{REPORT_CSS}{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>", f"<ul>{facts}</ul>"]
    if not metrics:
        parts.append(_note(f"The run has not finished (no {rundir.METRICS}): learning curves only.", "unfinished"))
    if not plotted:
        parts.append(_note(f"Tables only: {FIGURES_HINT}.", "no-figures"))
    notes = "".join(f"<li>{esc(n)}</li>" for n in run_notes(metrics, history))
    parts += _section("metrics", "Metrics", html_table(metric_rows(metrics)), f"<ul>{notes}</ul>" if notes else "")
    if isinstance(metrics.get("ranking"), dict):
        parts += _ranking_section(metrics["ranking"])
    if plotted:
        fig = learning_curve_figure(history, metrics)
        if fig is not None:
            parts += _section("curves", "Learning curves", html_image(png(fig), "learning curves"))
        fig = clock_figure(stages, metrics) if stages else None
        if fig is not None:
            parts += _section("clock", "Against the clock", html_image(png(fig), "accuracy against time"),
                              _note(_clock_text(stages, metrics)))
    per_class = per_class_rows(metrics)
    if per_class:
        fig = confusion_figure(metrics) if plotted else None
        parts += _section("confusion", "Confusion matrix and per-class metrics",
                          html_image(png(fig), "confusion matrix") if fig is not None else "",
                          "<h3 id='per-class'>Per-class metrics (test split)</h3>", html_table(per_class))
    if metrics:
        parts += _predictions_sections(metrics, rows)
        if plotted:
            parts += _image_sections(run_dir, config, metrics, rows, dataset)
    env_title, env_rows = _environment_rows(metrics)
    parts += _section("config", "Config", _config_html(config))
    parts += _section("environment", env_title, html_table(env_rows))
    parts += [_note(f"Written {_dt.datetime.now().isoformat(timespec='seconds')} by transferlab {__version__} from "
                    f"the files in {run_dir}."), "</body></html>"]
    return "\n".join(p for p in parts if p) + "\n"


def write_run_report(run_dir: str | Path, dataset: Dataset | None = None) -> Path:
    """Write ``RUN/report.html`` (atomically) from the run directory's files; returns its path.

    ``dataset``: the run's data, when the caller has it (the trainer at the end of a run);
    otherwise it is found again from the run's files, for the image sections only. Where the
    images cannot be read, the report says so in one line and holds everything else.
    """
    run_dir = Path(run_dir)
    run = rundir.RunDir(run_dir)
    config, metrics = run.config_dict(), run.metrics()
    if not run.holds_run():
        raise TransferlabError(f"{run_dir}: not a run directory (no run {rundir.CONFIG} or model of transferlab); "
                               "give the folder a run was trained into")
    try:
        # names shown as people read them (a non-UTF-8 class name as \\xNN); the paths stay as they are, to be opened
        shown = readable_tree(metrics or {})
        if metrics and "data_root" in metrics:
            shown["data_root"] = metrics["data_root"]
        rows = run.predictions()
        rows = None if rows is None else [{**readable_tree(r), "path": r.get("path")} for r in rows]
        text = _report_html(run_dir, config or {}, shown, run.history(), rows, dataset, run.stages())
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # hand-edited run files
        raise TransferlabError(f"{run_dir}: its {rundir.CONFIG} or {rundir.METRICS} hold values no run writes "
                               f"({first_line(exc, 200, typed=True)}); restore them, or train the run again") from None
    return atomic_write_text(run_dir / rundir.REPORT, text)
