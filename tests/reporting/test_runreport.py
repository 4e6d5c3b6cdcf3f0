"""The run report (RUN/report.html) and its figures, from synthetic run directories in the run-file schema."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import HOTDOG_MINI, import_graph, make_folder, reachable

from transferlab.reporting import run as runreport
from transferlab.reporting.figures import confusion_figure, mistake_rows, mistakes_figure
from transferlab.reporting.run import summary_html, write_run_report
from transferlab.reporting.run_figures import binary_curves, expected_calibration_error, learning_curve_figure

PRE = {"crop_size": 64, "resize_size": 73, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "interpolation": "bilinear"}
COLORS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def two_class_data(tmp_path: Path) -> Path:
    """Real photos (hotdog-mini: train/ and val/) where present, else generated ones in the same layout."""
    if HOTDOG_MINI.is_dir():
        return HOTDOG_MINI
    return make_folder(tmp_path / "two", {"train": 6, "val": 5},
                       {"hotdog": (200, 120, 60), "not_hotdog": (60, 160, 60)})


def eval_files(root: Path) -> tuple[list[str], list[str]]:
    """(paths relative to root, class names) of the val/ split, sorted by path."""
    classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    paths = sorted(str(p.relative_to(root)) for c in classes for p in (root / "val" / c).iterdir())
    return paths, classes


def block(split: str, labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    pred = probs.argmax(1)
    k = len(classes)
    matrix = [[int(((labels == i) & (pred == j)).sum()) for j in range(k)] for i in range(k)]
    per_class = {}
    for i, name in enumerate(classes):
        tp, support, predicted = matrix[i][i], sum(matrix[i]), sum(r[i] for r in matrix)
        p, r = tp / max(predicted, 1), tp / max(support, 1)
        per_class[name] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": support}
    out = {"split": split, "images": len(labels), "accuracy": float((pred == labels).mean()),
           "balanced_accuracy": float(np.mean([v["recall"] for v in per_class.values()])),
           "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
           "nll": float(-np.log(probs[np.arange(len(labels)), labels]).mean()), "ece": 0.07, "per_class": per_class,
           "confusion": {"rows": "true", "columns": "predicted", "labels": classes, "matrix": matrix}}
    if k == 2:
        out.update({"roc_auc": 0.9, "average_precision": 0.88, "positive_class": classes[1]})
    return out


def make_run(run_dir: Path, root: Path, *, new: bool = True, data_root: Path | None = None) -> dict:
    """A finished run's files: config.json, metrics.jsonl, metrics.json and (new style) test_predictions.csv."""
    paths, classes = eval_files(root)
    rng = np.random.default_rng(0)
    labels = np.array([classes.index(Path(p).parts[1]) for p in paths])
    logits = rng.normal(0, 1, (len(paths), len(classes)))
    logits[np.arange(len(paths)), labels] += 1.8
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    run_dir.mkdir(parents=True)
    config = {"data": str(root), "model": "mobilenet_v2", "weights": "imagenet", "epochs": 5, "batch_size": 32,
              "lr": 2e-5, "freeze": "none", "crop_scale": [0.6, 1.0], "crop_region": "center", "seed": 3,
              "image_size": 64, "train_image_size": None, "head_warmup_epochs": 4}
    config.update({"test_fraction": 0.25, "val_fraction": 0.2, "select_metric": "loss", "early_stopping": 2,
                   "class_weights": "none", "calibrate": True} if new else {"val_fraction": 0.25})
    (run_dir / "config.json").write_text(json.dumps(config))
    split = "val" if new else "test"
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.6 + 0.05 * e,
                f"{split}_loss": 0.5 + 0.02 * (e - 3) ** 2, f"{split}_acc": 0.7 + 0.03 * min(e, 3), "wall_s": 2.0 * e}
               for e in range(1, 6)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    test = block("test", labels, probs, classes)
    metrics = {"test_acc": test["accuracy"], "test_loss": test["nll"], "best_test_acc": test["accuracy"],
               "class_names": classes, "preprocessing": PRE, "train_crop_size": 64, "device": "cpu", "epochs": 5,
               "wall_s": 10.0, "train_images": 200, "test_images": len(paths), "weights": {"name": "IMAGENET1K_V2"},
               "confusion": test["confusion"]["matrix"], "head_warmup_acc": 0.8,
               "per_class_acc": [v["recall"] for v in test["per_class"].values()]}
    if new:
        metrics.update({
            "test": test, "val": block("val", labels[::2], probs[::2], classes),
            "selection": {"metric": "loss", "split": "val", "best_epoch": 3, "best_value": 0.5, "stopped_early": False,
                          "kept": "best epoch"},
            "head_warmup": {"epochs": 4, "split": "val", "accuracy": 0.8, "loss": 0.6,
                            "history": [{"epoch": e, "train_loss": 1.2 / e, "train_acc": 0.5 + 0.05 * e}
                                        for e in range(1, 5)]},
            "calibration": {"temperature": 1.31, "split": "val", "ece_before": 0.0712, "ece_after": 0.0321},
            "data_root": str(data_root or root), "environment": {"python": "3.11", "torch": "2.x", "cpu": "test cpu"},
            "test_split": {"source": "val", "seed": 3, "fraction": 0.25, "files": paths}})
        lines = ["path,label,predicted,correct," + ",".join(f"prob_{c}" for c in classes)]
        for path, label, p in zip(paths, labels, probs):
            pred = int(p.argmax())
            lines.append(f"{path},{classes[label]},{classes[pred]},{int(pred == label)},"
                         + ",".join(f"{v:.6f}" for v in p))
        (run_dir / "test_predictions.csv").write_text("\n".join(lines) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


def sections(text: str) -> set[str]:
    return set(re.findall(r"<h[23] id='([a-z-]+)'>", text))


def images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_two_class_report_has_every_section_and_is_self_contained(tmp_path):
    run = tmp_path / "run"
    make_run(run, two_class_data(tmp_path))
    path = write_run_report(run)
    assert path == run / "report.html"
    text = path.read_text()
    assert sections(text) == {"metrics", "curves", "clock", "confusion", "per-class", "roc", "reliability", "crops",
                              "mistakes", "config", "environment"}
    # every src= is an embedded PNG: nothing is fetched from elsewhere
    assert len(re.findall(r"src=", text)) == len(images(text)) == 7
    assert all(png.startswith(b"\x89PNG") for png in images(text))
    assert "Images not shown" not in text and "no-predictions" not in text
    assert "kept epoch 3, the best validation loss" in text
    assert "T = 1.310" in text and "0.0712 before, 0.0321 after" in text
    assert "Head warm-up: 4 epochs" in text and "test cpu" in text  # the run's own environment
    assert "&quot;select_metric&quot;: &quot;loss&quot;" in text  # the config
    changed = text.split("Changed from the defaults")[1].split("</table>")[0]  # what differs first
    assert "<td>select_metric</td><td>&quot;loss&quot;</td><td>null</td>" in changed and "optimizer" not in changed
    # the metrics table: a validation and a test row
    table = text.split("id='metrics'")[1].split("</table>")[0]
    assert "<th>validation</th>" in table and "<th>test" in table and "ROC AUC" in table


def test_three_classes_have_no_roc_section(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    make_run(tmp_path / "run", root)
    text = write_run_report(tmp_path / "run").read_text()
    assert "roc" not in sections(text) and "ROC AUC" not in text
    assert {"reliability", "crops", "mistakes", "confusion"} <= sections(text)


def test_missing_data_degrades_to_a_note(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    make_run(tmp_path / "run", root)
    gone = tmp_path / "moved"
    root.rename(gone)
    text = write_run_report(tmp_path / "run").read_text()
    assert re.search(r"id='no-images'>Images not shown: cannot read the data at .*colors", text)
    assert not {"crops", "mistakes"} & sections(text)
    assert {"metrics", "curves", "confusion", "reliability", "config"} <= sections(text)


def test_a_given_dataset_is_used_instead_of_the_files(tmp_path):
    from transferlab.data.datasets import resolve_data

    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    make_run(tmp_path / "run", root, data_root=tmp_path / "nowhere")
    dataset = resolve_data(str(root))
    text = write_run_report(tmp_path / "run", dataset=dataset).read_text()
    assert {"crops", "mistakes"} <= sections(text) and "Images not shown" not in text


def test_old_style_run_still_gets_a_report(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    metrics = make_run(tmp_path / "run", root, new=False)
    text = write_run_report(tmp_path / "run").read_text()
    assert "id='no-predictions'" in text
    assert {"metrics", "curves", "confusion", "per-class", "crops", "config", "environment"} <= sections(text)
    assert not {"roc", "reliability", "mistakes"} & sections(text)
    assert f"{metrics['test_acc']:.4f}" in text and "Head warm-up: test accuracy 0.8000" in text
    # precision comes from the flat confusion matrix: column 0 of the matrix
    matrix = metrics["confusion"]
    precision = matrix[0][0] / sum(r[0] for r in matrix)
    per_class = text.split("id='per-class'")[1].split("</table>")[0]
    assert f"{precision:.4f}" in per_class


def test_not_a_run_directory_is_refused(tmp_path):
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError, match="not a run directory"):
        write_run_report(tmp_path)


def test_without_matplotlib_the_report_has_tables_only(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    make_run(tmp_path / "run", root)
    monkeypatch.setattr(runreport, "pyplot", lambda: None)
    text = write_run_report(tmp_path / "run").read_text()
    assert "<img" not in text and "pip install &#x27;transferlab[report]&#x27;" in text
    assert {"metrics", "per-class", "config"} <= sections(text)
    fragment = summary_html(json.loads((tmp_path / "run" / "metrics.json").read_text()), [])
    assert "<img" not in fragment and "<table>" in fragment


def test_summary_fragment_holds_metrics_curves_and_confusion(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    metrics = make_run(tmp_path / "run", root)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fragment = summary_html(metrics, history)
    assert "<html" not in fragment and "<table>" in fragment and len(images(fragment)) == 2


def test_learning_curves_draw_the_warmup_as_its_own_phase(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    metrics = make_run(tmp_path / "run", root)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fig = learning_curve_figure(history, metrics)
    loss, acc = fig.axes
    assert loss.get_ylabel() == "loss" and acc.get_ylabel() == "accuracy"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"train", "validation", "warm-up: train", "head warm-up (head only, 4 epochs)",
            "test (kept model)"} <= set(labels)
    assert any("kept: epoch 3" in label for label in labels)
    warm = next(line for line in loss.get_lines() if line.get_label() == "warm-up: train")
    # before fine-tuning epoch 1, its 4 cheap epochs in the width of one: the epochs keep most of the axis
    assert list(warm.get_xdata()) == [-0.75, -0.5, -0.25, 0]
    assert loss.get_xlim()[0] > -1.1


def test_confusion_axes_name_rows_true_and_columns_predicted(tmp_path):
    root = make_folder(tmp_path / "colors", {"train": 4, "val": 3}, COLORS)
    metrics = make_run(tmp_path / "run", root)
    ax = confusion_figure(metrics).axes[0]
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true class", "predicted class")
    assert [t.get_text() for t in ax.get_yticklabels()] == metrics["test"]["confusion"]["labels"]
    old = {"confusion": [[1, 2], [0, 3]], "class_names": ["a", "b"]}
    assert [t.get_text() for t in confusion_figure(old).axes[0].get_xticklabels()] == ["a", "b"]
    assert confusion_figure({}) is None


def test_mistakes_are_the_most_confident_first(tmp_path):
    root = make_folder(tmp_path / "colors", {"val": 2}, {"red": COLORS["red"], "blue": COLORS["blue"]})
    rows = [{"path": "val/red/red_0.png", "label": "red", "predicted": "blue", "correct": 0, "prob_blue": 0.7,
             "prob_red": 0.3},
            {"path": "val/red/red_1.png", "label": "red", "predicted": "red", "correct": 1, "prob_blue": 0.01,
             "prob_red": 0.99},
            {"path": "val/blue/blue_0.png", "label": "blue", "predicted": "red", "correct": "0", "prob_blue": "0.1",
             "prob_red": "0.9"}]
    assert [m["path"] for m in mistake_rows(rows)] == ["val/blue/blue_0.png", "val/red/red_0.png"]
    ax = mistakes_figure(rows, root, PRE, k=1).axes[0]
    assert len(ax.images) == 1 and ax.images[0].get_array().shape[1] == 64  # the eval crop's width, not 82
    captions = [t.get_text() for t in ax.texts]
    assert captions == ["blue_0.png\ntrue: blue\npredicted: red (90%)"]  # each mistake names its file
    ax = mistakes_figure(rows, root, PRE).axes[0]
    assert [t.get_text().split("\n")[1] for t in ax.texts] == ["true: blue", "true: red"]
    assert mistakes_figure(rows[1:2], root, PRE) is None


def test_calibration_error_and_binary_curves():
    conf = np.full(10, 0.9)
    assert expected_calibration_error(conf, np.ones(10) * (np.arange(10) < 9)) == pytest.approx(0.0)
    assert expected_calibration_error(conf, (np.arange(10) < 5).astype(float)) == pytest.approx(0.4)
    curves = binary_curves(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert curves["roc_auc"] == pytest.approx(0.75) and curves["average_precision"] == pytest.approx(5 / 6)


def test_the_run_report_does_not_import_the_training_engine():
    graph = import_graph()
    assert not {m for m in reachable(graph, "reporting.run") if m.startswith("train.")}
