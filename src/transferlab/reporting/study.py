"""The study report: summary.json, report.md and a self-contained report.html over every variant's runs."""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import rundir
from ..console import count, interval_text
from ..evaluation.intervals import paired_accuracy, wilson
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..system import environment
from .common import REPORT_CSS, format_table, html_image, html_table
from .figures import (
    FIGURES_HINT,
    MISTAKES_SHOWN,
    confusion_figure,
    mistake_rows,
    mistakes_figure,
    plot_accuracy,
    plot_curves,
    plot_group,
    pm,
    png,
    pyplot,
)

__all__ = ["summarize_study", "write_study_report", "study_rows", "verdict", "STUDY_METRICS"]

log = logging.getLogger(__name__)


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


# the test metrics a study aggregates per variant, under their metrics.json names
STUDY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "roc_auc")


def summarize_study(out: str | Path, study: dict[str, Any], base_config: dict[str, Any],
                    changes: dict[str, dict[str, Any]], runs: Sequence[dict[str, Any]],
                    wall_s: float | None = None) -> dict[str, Any]:
    """Collect every finished run of a study (``runs``: variant, seed, run_dir relative to ``out``).

    Variants are sorted by mean final test accuracy, best first; ``changes`` are the
    config keys each variant changes, as resolved (``freeze: half`` -> a stage).
    """
    out = Path(out)
    variants, classes, devices = [], None, set()
    for name, overrides in study["variants"].items():
        planned = [r for r in runs if r["variant"] == name]
        rows = []
        for entry in planned:
            run_dir = out / entry["run_dir"]
            metrics = rundir.RunDir(run_dir).metrics()
            if not metrics:
                continue
            classes = classes or metrics.get("class_names")
            devices.add(metrics.get("device"))
            history = rundir.RunDir(run_dir).history()
            split = "val" if any("val_acc" in h for h in history) else "test"  # runs with a validation split
            test = metrics.get("test", {})  # the metric names of metrics.json and `evaluate`
            rows.append({"seed": entry["seed"], "run_dir": entry["run_dir"], "test_acc": metrics["test_acc"],
                         "test_images": test.get("images") or metrics.get("test_images"),
                         **{key: test.get(key) for key in STUDY_METRICS},
                         "head_warmup_acc": (metrics.get("head_warmup") or {}).get("accuracy"),
                         "epochs_trained": metrics.get("epochs_trained"), "wall_s": metrics["wall_s"],
                         "train_images_per_s": metrics.get("train_images_per_s"),
                         "zero_shot_acc": metrics.get("zero_shot_acc"), "confusion": metrics.get("confusion"),
                         "curve": [h[f"{split}_acc"] for h in history if h.get(f"{split}_acc") is not None],
                         "curve_split": split})
        item: dict[str, Any] = {"name": name, "overrides": overrides, "changes": changes.get(name, {}),
                                "planned": len(planned), "finished": len(rows), "runs": rows}
        for key in ("test_acc", *STUDY_METRICS, "head_warmup_acc", "wall_s", "train_images_per_s", "zero_shot_acc"):
            item[f"{key}_mean"], item[f"{key}_std"] = _stats([r[key] for r in rows])
        item["test_acc_interval"] = _pooled_interval(rows)
        variants.append(item)
    order = list(study["variants"])
    variants.sort(key=lambda v: (v["test_acc_mean"] is None, -(v["test_acc_mean"] or 0.0), order.index(v["name"])))
    done = [v for v in variants if v["finished"]]
    predictions = {v["name"]: {r["seed"]: rundir.RunDir(out / r["run_dir"]).predictions() or [] for r in v["runs"]}
                   for v in done}
    if order[0] in predictions:
        for v in done:
            if v["name"] != order[0]:
                v["vs_reference"] = _compare(predictions, v["name"], order[0])
    leader = _compare(predictions, done[0]["name"], done[1]["name"]) if len(done) > 1 else None
    if leader:
        leader.update({"variant": done[0]["name"], "runner_up": done[1]["name"]})
    # a best variant is named only when it separates from the runner-up over the same test images
    best = done[0]["name"] if len(done) == 1 or (leader and leader["separates"]) else None
    return {
        "study": study["name"], "description": study.get("description", ""), "source": study.get("source"),
        "out": str(out), "seeds": sorted({r["seed"] for r in runs}), "variant_order": order,
        "groups": study.get("groups", {}), "base_config": base_config, "class_names": classes,
        "runs_planned": len(runs), "runs_finished": sum(v["finished"] for v in variants),
        "compute_s": round(sum(r["wall_s"] for v in variants for r in v["runs"]), 1),
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "best_variant": best, "top_variant": done[0]["name"] if done else None, "leader": leader,
        "devices": sorted(d for d in devices if d),
        "environment": environment(), "written": _dt.datetime.now().isoformat(timespec="seconds"),
        "variants": variants,
    }


def _pooled_interval(rows: Sequence[dict[str, Any]]) -> list[float] | None:
    """Wilson's 95 % interval of a variant's accuracy over the test images of all its seeds together."""
    scored = [(r["test_acc"], r["test_images"]) for r in rows if r.get("test_images")]
    n = sum(images for _, images in scored)
    span = wilson(sum(round(acc * images) for acc, images in scored), n)
    return None if span is None else [round(span[0], 4), round(span[1], 4)]


def _compare(predictions: dict[str, dict[int, list[dict[str, Any]]]], a: str, b: str) -> dict[str, Any] | None:
    """Accuracy of variant ``a`` minus ``b``, paired over the test images both scored at the same seed (seeds
    pooled): :func:`~transferlab.evaluation.intervals.paired_accuracy`."""
    found = paired_accuracy((rows, predictions[b].get(seed) or []) for seed, rows in predictions[a].items())
    if found is None:
        return None
    return {"difference": round(found["difference"], 4), "interval": [round(x, 4) for x in found["interval"]],
            "images": found["images"], "separates": found["separates"], "reference": b, "seeds": found["pairs"]}


def _difference_text(found: dict[str, Any] | None) -> str:
    """``+2.0 (-4.0 to +8.0)``: points, with the paired 95 % interval."""
    if not found:
        return "-"
    lo, hi = found["interval"]
    return f"{100 * found['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def verdict(summary: dict[str, Any]) -> str:
    """One sentence: which variant is best, or that the study cannot tell (paired 95 % intervals)."""
    leader, reference = summary.get("leader"), summary["variant_order"][0]
    compared = [v for v in summary["variants"] if v.get("vs_reference")]
    if summary.get("best_variant") and leader:
        return (f"best: {leader['variant']}, ahead of {leader['runner_up']} by {_difference_text(leader)} points "
                "(paired 95% interval over the same test images)")
    if summary.get("best_variant"):
        return f"one variant: {summary['best_variant']}"
    apart = [v["name"] for v in compared if v["vs_reference"]["separates"]]
    if leader is None:
        return "no finished runs"
    text = (f"no best variant: {leader['variant']} leads {leader['runner_up']} by {_difference_text(leader)} points, "
            "an interval that includes 0")
    if compared and not apart:
        text += f"; no variant separates from {reference}"
    elif apart:
        text += f"; separate from {reference}: {', '.join(apart)}"
    return text


def _changes_text(variant: dict[str, Any]) -> str:
    parts = []
    for key, value in variant["changes"].items():
        asked = variant["overrides"].get(key, value)
        if isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{key}={value}" + (f" ({asked})" if asked != variant["changes"][key] else ""))
    return ", ".join(parts) or "(base config)"


def study_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The results table: one row per variant, best mean test accuracy first."""
    rows = []
    for rank, v in enumerate(summary["variants"], 1):
        span = interval_text(v.get("test_acc_interval"))
        rows.append({
            "#": rank, "variant": v["name"], "changes": _changes_text(v),
            "test acc (95% CI)": pm(v["test_acc_mean"], v["test_acc_std"]) + (f" ({span})" if span else ""),
            f"Δ vs {summary['variant_order'][0]} (pts, 95% CI)": _difference_text(v.get("vs_reference")),
            "balanced acc": pm(v["balanced_accuracy_mean"], v["balanced_accuracy_std"]),
            "macro F1": pm(v["macro_f1_mean"], v["macro_f1_std"]),
            "head warm-up acc": pm(v["head_warmup_acc_mean"], v["head_warmup_acc_std"]),
            "zero-shot": pm(v["zero_shot_acc_mean"], v["zero_shot_acc_std"]),
            "s / run": f"{v['wall_s_mean']:.0f}" if v["wall_s_mean"] is not None else "-",
            "train img/s": f"{v['train_images_per_s_mean']:.0f}" if v["train_images_per_s_mean"] else "-",
            "seeds": f"{v['finished']}/{v['planned']}",
        })
    for column in ("zero-shot", "head warm-up acc", "balanced acc", "macro F1"):  # old runs, or none applies
        if all(r[column] == "-" for r in rows):
            for r in rows:
                del r[column]
    return rows


def _representative(variant: dict[str, Any]) -> dict[str, Any]:
    """The run of a variant whose final accuracy is closest to the variant's mean."""
    return min(variant["runs"], key=lambda r: (abs(r["test_acc"] - variant["test_acc_mean"]), r["seed"]))


def _predicted_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Prediction rows of a run's test images made now (runs older than ``test_predictions.csv``); absolute paths."""
    from ..data.datasets import dataset_for
    from ..inference.predictor import load

    dataset = dataset_for(rundir.RunDir(run_dir).config(), validation=False)
    predictor = load(run_dir, device="cpu")
    paths = list(dataset.test.paths)
    rows = []
    for start in range(0, len(paths), 32):
        chunk = paths[start:start + 32]
        for path, label, p in zip(chunk, dataset.test.labels[start:start + 32], predictor.predict_proba(chunk)):
            pred = predictor.classes[int(p.argmax())]
            true = dataset.classes[label]
            rows.append({"path": str(path), "label": true, "predicted": pred, "correct": int(pred == true),
                         **{f"prob_{c}": float(v) for c, v in zip(predictor.classes, p)}})
    return rows


def _prediction_rows(run_dir: Path, metrics: dict[str, Any]) -> tuple[list[dict[str, Any]], Path | None]:
    """The run's test predictions and the folder their paths are relative to (None: absolute paths)."""
    rows = rundir.RunDir(run_dir).predictions()
    if rows is not None and metrics.get("data_root"):
        return rows, Path(metrics["data_root"])
    return _predicted_rows(run_dir), None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "group"


def write_study_report(out: str | Path, summary: dict[str, Any]) -> dict[str, Path]:
    """Write ``summary.json``, ``report.md`` (figures in ``figures/``) and a self-contained ``report.html``."""
    out = Path(out)
    best = next((v for v in summary["variants"] if v["name"] == summary.get("top_variant")), None)
    metrics: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    root = None
    if best is not None:
        run = _representative(best)
        metrics = rundir.RunDir(out / run["run_dir"]).metrics() or {}
        try:
            rows, root = _prediction_rows(out / run["run_dir"], metrics)
        except Exception as exc:  # noqa: BLE001 - a report without the image grid beats no report
            log.warning("report: cannot predict the test images of %s (%s)", run["run_dir"], exc)
        summary["best_run"] = {"variant": best["name"], "seed": run["seed"], "run_dir": run["run_dir"],
                               "test_acc": run["test_acc"], "confusion": run["confusion"],
                               "mistakes": mistake_rows(rows)}
    figures: list[tuple[str, str, bytes]] = []  # (file stem, caption, png)
    plotted = pyplot() is not None
    if plotted and best is not None:
        figures.append(("accuracy", "Final test accuracy by variant", png(plot_accuracy(summary))))
        figures.append(("curves", "Learning curves", png(plot_curves(summary))))
        for title, names in summary["groups"].items():
            fig = plot_group(summary, title, names)
            if fig is not None:
                figures.append((f"group_{_slug(title)}", title, png(fig)))
        br = summary["best_run"]
        fig = confusion_figure(metrics, f"{br['variant']}, seed {br['seed']}: test acc {br['test_acc']:.3f}")
        if fig is not None:
            figures.append(("confusion", "Confusion matrix", png(fig)))
        fig = mistakes_figure(rows, root, metrics["preprocessing"], MISTAKES_SHOWN) \
            if metrics.get("preprocessing") else None
        if fig is not None:
            figures.append(("mistakes", "Most confidently misclassified test images", png(fig)))
    for stem, _caption, data in figures:
        atomic_write(out / "figures" / f"{stem}.png", lambda tmp, data=data: Path(tmp).write_bytes(data))
    paths = {"summary": atomic_write_json(out / "summary.json", summary),
             "md": atomic_write_text(out / "report.md", _markdown(summary, figures, plotted)),
             "html": atomic_write_text(out / "report.html", _html(summary, figures, plotted))}
    return paths


def _title(summary: dict[str, Any]) -> str:
    base = summary["base_config"]
    return f"Study {summary['study']}: {Path(str(base['data'])).name}, {base['model']}"


def _facts(summary: dict[str, Any]) -> list[str]:
    base = summary["base_config"]
    size = f"{base['image_size']} px" if base.get("image_size") else "the weights' own size"
    facts = [f"{count(len(summary['variants']), 'variant')} x {count(len(summary['seeds']), 'seed')} "
             f"({summary['runs_finished']}/{summary['runs_planned']} runs finished); "
             f"{count(base['epochs'], 'epoch')} per run, batch {base['batch_size']}, {size}",
             f"compute: {summary['compute_s']:.0f} s over all runs"
             + (f"; this invocation: {summary['wall_s']:.0f} s wall" if summary.get("wall_s") is not None else "")
             + f"; device: {', '.join(summary['devices']) or '-'}"]
    top = next((v for v in summary["variants"] if v["name"] == summary.get("top_variant")), None)
    if top:
        span = interval_text(top.get("test_acc_interval"))
        facts.append(f"top by mean: **{top['name']}** at {pm(top['test_acc_mean'], top['test_acc_std'])} test "
                     "accuracy (mean ± std over seeds" + (f"; 95% CI {span} over their test images)" if span else ")"))
        facts.append(verdict(summary))
    return facts


def _env_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in summary["environment"].items()]


def _markdown(summary: dict[str, Any], figures: list[tuple[str, str, bytes]], plotted: bool) -> str:
    lines = [f"# {_title(summary)}", ""]
    if summary["description"]:
        lines += [summary["description"][:1].upper() + summary["description"][1:] + ".", ""]
    lines += [f"- {fact}" for fact in _facts(summary)] + ["", "## Results", "", format_table(study_rows(summary)),
                                                          ""]
    if not plotted:
        lines += [f"({FIGURES_HINT})", ""]
    for stem, caption, _png_data in figures:
        lines += [f"## {caption}" if stem in ("accuracy", "curves", "confusion", "mistakes") else f"### {caption}",
                  "", f"![{caption}](figures/{stem}.png)", ""]
    br = summary.get("best_run")
    if br and not br["mistakes"]:
        lines += [f"No misclassified test images for {br['variant']} seed {br['seed']}.", ""]
    lines += ["## Base config", "", "```json", json.dumps(summary["base_config"], indent=2, sort_keys=True), "```",
              "", "## Environment", "", format_table([{"": k, "value": v} for k, v in _env_rows(summary)]), "",
              f"Written {summary['written']} by transferlab {summary['environment']['transferlab']}.", ""]
    return "\n".join(lines)


def _html(summary: dict[str, Any], figures: list[tuple[str, str, bytes]], plotted: bool) -> str:
    esc = html.escape
    bold = re.compile(r"[*][*](.+?)[*][*]")
    facts = "".join("<li>" + bold.sub(r"<b>\1</b>", esc(f)) + "</li>" for f in _facts(summary))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(_title(summary))}</title>"
             f"<style>{REPORT_CSS}</style></head><body>", f"<h1>{esc(_title(summary))}</h1>"]
    if summary["description"]:
        parts.append(f"<p class=muted>{esc(summary['description'])}</p>")
    parts += [f"<ul>{facts}</ul>", "<h2>Results</h2>", html_table(study_rows(summary))]
    if not summary.get("best_variant"):  # the first row is first by mean only: not set apart
        parts.insert(1, "<style>tr:first-child td{font-weight:normal}</style>")
    if not plotted:
        parts.append(f"<p class=muted>({html.escape(FIGURES_HINT)})</p>")
    by_stem = {stem: (caption, image) for stem, caption, image in figures}
    for stem in ("accuracy", "curves"):
        if stem in by_stem:
            caption, image = by_stem[stem]
            parts += [f"<h2>{esc(caption)}</h2>", html_image(image, caption)]
    small = [(caption, image) for stem, caption, image in figures if stem.startswith("group_")]
    if small:
        parts.append("<h2>Ablations</h2><div class=small>")
        parts += [f"<figure>{html_image(image, caption)}</figure>" for caption, image in small]
        parts.append("</div>")
    br = summary.get("best_run")
    if br:
        which = "Best variant" if summary.get("best_variant") else "Top variant by mean (not separated)"
        parts.append(f"<h2>{which}: {esc(br['variant'])} (seed {br['seed']})</h2>")
        if "confusion" in by_stem:
            parts.append(html_image(by_stem["confusion"][1], "confusion matrix"))
        if "mistakes" in by_stem:
            parts += [f"<h3>Most confidently misclassified test images ({len(br['mistakes'])} wrong in all)</h3>",
                      html_image(by_stem["mistakes"][1], "misclassified images")]
        elif not br["mistakes"]:
            parts.append("<p>No misclassified test images.</p>")
    parts += ["<h2>Base config</h2>", f"<pre>{esc(json.dumps(summary['base_config'], indent=2, sort_keys=True))}</pre>",
              "<h2>Environment</h2>", html_table([{"": k, "value": v} for k, v in _env_rows(summary)]),
              f"<p class=muted>Written {esc(summary['written'])}; run directories under "
              f"{esc(summary['out'])}/&lt;variant&gt;/seed&lt;k&gt;/.</p>", "</body></html>"]
    return "\n".join(parts) + "\n"
