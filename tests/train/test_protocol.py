"""The validation protocol in a run: train / validation / test roles, selection, class weights, calibration."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from helpers import make_folder, make_image, run_cli, run_reports_off

from transferlab.config import RunConfig, make_config
from transferlab.errors import TransferlabError
from transferlab.inference.predictor import load
from transferlab.rundir import read_predictions
from transferlab.train import head_fit as headfit
from transferlab.train import optim
from transferlab.train import trainer as train
from transferlab.workflows.finetuning import finetune

TINY = {"model": "mobilenet_v2", "image_size": 32, "batch_size": 8, "head_warmup_epochs": 2}  # tiny crops


# -- selection


def test_roc_auc_selection_needs_two_classes(tmp_path):
    three = make_folder(tmp_path / "three", {"train": 3, "val": 2},
                        {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)})
    with pytest.raises(TransferlabError, match="ROC-AUC needs two classes"):
        train.Trainer(make_config(data=str(three), model="mobilenet_v2", select_metric="roc_auc"))


def test_config_roles_and_the_old_spelling():
    named = make_config(model="mobilenet_v2")  # a named model: no selection, nothing carved, unless asked
    assert named.carve_fraction == 0.0 and named.selection is None
    stopping = make_config(model="mobilenet_v2", early_stopping=2)
    assert stopping.selection == "loss" and stopping.carve_fraction == 0.15
    default = make_config()  # the default model, auto, plans against a clock: it selects on a carved split
    assert default.model == "auto" and default.selection == "loss" and default.carve_fraction == 0.15
    assert make_config(select_metric="macro_f1", val_fraction=0.3).carve_fraction == 0.3
    for bad in ({"select_metric": "f2"}, {"early_stopping": -1}, {"val_fraction": 1.0}, {"class_weights": "x"}):
        with pytest.raises(TransferlabError):
            make_config(**bad)


# -- a run with a validation split: every choice reads validation, test is scored once


@pytest.fixture(scope="module")
def selected_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    data = make_folder(root / "colors", {"train": 10, "val": 4})
    calls: list[str] = []
    original = train.Trainer.split_logits

    def spy(self, model, split):
        calls.append(split)
        return original(self, model, split)

    train.Trainer.split_logits = spy
    try:
        with run_reports_off():  # its tests read the run's metrics, model and predictions, not its report
            result = finetune(make_config(data=str(data), epochs=3, select_metric="accuracy", calibrate=True,
                                          val_fraction=0.2, out=str(root / "run"), **TINY), quiet=True)
    finally:
        train.Trainer.split_logits = original
    return result, calls, data


def test_no_choice_reads_the_test_split(selected_run):
    result, calls, _ = selected_run
    # every epoch and the calibration read validation; test is read once, after the last choice
    assert calls.count("test") == 1 and calls.index("test") == len(calls) - 2  # then the kept model on val
    assert all(set(row) & {"test_acc", "test_loss"} == set() for row in result.history)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.metrics["head_warmup"]["split"] == "val" and "head_warmup_acc" not in result.metrics
    assert "best_test_acc" not in result.metrics


def test_the_selected_epoch_is_the_saved_model(selected_run):
    result, _, data = selected_run
    selection = result.metrics["selection"]
    best = result.history[selection["best_epoch"] - 1]
    assert selection["best_value"] == max(row["val_acc"] for row in result.history) == best["val_acc"]
    assert result.metrics["val"]["accuracy"] == best["val_acc"]  # the kept weights score what that epoch scored
    calibration = result.metrics["calibration"]
    assert calibration["split"] == "val" and calibration["temperature"] > 0
    assert calibration["ece_after"] == result.metrics["test"]["ece"]


def test_saved_predictions_match_the_saved_model(selected_run):
    result, _, data = selected_run
    rows = read_predictions(result.run_dir / "test_predictions.csv")
    assert len(rows) == result.metrics["test"]["images"] == 8
    assert sum(r["correct"] for r in rows) / len(rows) == result.metrics["test_acc"]
    predictor = load(result.run_dir, precision=None)  # at the run's precision; the temperature is in the head
    probs = predictor.predict_proba([data / r["path"] for r in rows])
    assert torch.allclose(probs[:, 0], torch.tensor([r["prob_blue"] for r in rows]), atol=1e-4)


def test_evaluate_gives_the_run_metrics_and_per_image_rows(selected_run, tmp_path):
    result, _, data = selected_run
    proc = run_cli("evaluate", result.run_dir, "--data", data, "--per-image", tmp_path / "rows.csv", "--quiet")
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "roc_auc", "per_class", "confusion"):
        assert scored[key] == result.metrics["test"][key], key
    assert read_predictions(tmp_path / "rows.csv") == read_predictions(result.run_dir / "test_predictions.csv")
    tta = json.loads(run_cli("evaluate", result.run_dir, "--data", data, "--tta", "--quiet").stdout)
    assert tta["tta"] is True and tta["images"] == 8
    refused = run_cli("evaluate", result.run_dir, "--data", data, "--per-image", result.run_dir / "metrics.json")
    assert refused.returncode == 2 and "one of the run's own files" in refused.stderr


def test_class_weights_reach_the_head_warmup_and_the_loss(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "imbalanced", {"val": 2})
    for i in range(9):  # 9 red, 3 blue training images
        make_image(data / "train" / "red" / f"r{i}.png", (200, 40, 40), seed=i)
    for i in range(3):
        make_image(data / "train" / "blue" / f"b{i}.png", (40, 40, 200), seed=50 + i)
    seen = {}
    original = optim.fit_head

    def spy(*args, **kwargs):
        seen["weight"] = kwargs.get("weight")
        return original(*args, **kwargs)

    monkeypatch.setattr(headfit, "fit_head", spy)
    result = finetune(make_config(data=str(data), epochs=1, class_weights="balanced", **TINY), quiet=True)
    # classes sort as blue, red: 12 / (2 * 3) and 12 / (2 * 9)
    assert torch.allclose(seen["weight"], torch.tensor([2.0, 12 / 18]))
    assert result.metrics["test"]["per_class"]["blue"]["support"] == 2


def test_cli_names_the_roles(tmp_path, no_run_reports):
    data = make_folder(tmp_path / "bare", {"": 6})
    proc = run_cli("train", "--data", data, "--model", "mobilenet_v2", "--val-fraction", "0.2", "--epochs", "1",
                   "--image-size", "32", "--head-warmup-epochs", "1", "--out", tmp_path / "run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "note: --val-fraction now sizes the validation split carved from train" in proc.stderr
    assert "model.safetensors (epoch 1, the last)" in proc.stdout and "report:" in proc.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test_split"]["fraction"] == 0.25 and metrics["val_split"]["source"] == "carved"
    assert metrics["val_images"] == 2 and metrics["test_images"] == 4 and metrics["train_images"] == 6
    out = tmp_path / "preds.jsonl"
    proc = run_cli("predict", tmp_path / "run", data, "--out", out)
    assert proc.returncode == 0 and proc.stdout == "" and len(out.read_text().splitlines()) == 12
    assert run_cli("predict", tmp_path / "run", data, "--out", tmp_path / "run" / "config.json").returncode == 2


def test_old_config_files_keep_their_test_share(tmp_path):
    """A config.json written before the roles had names: its val_fraction was the test share."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data": "x", "val_fraction": 0.4}))
    loaded = RunConfig.load(path)
    assert loaded.test_fraction == 0.4 and loaded.val_fraction == 0.0
    from transferlab import rundir

    assert rundir.saved_differences(tmp_path, replace(loaded, out=str(tmp_path))) == []
