"""The validation protocol and the metrics: train / validation / test roles, selection, class weights, calibration."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from conftest import make_folder, make_image, run_cli

from transferlab.config import RunConfig, make_config
from transferlab.data.datasets import resolve_data
from transferlab.errors import TransferlabError
from transferlab.evaluation.metrics import (
    class_weights,
    fit_temperature,
    metric_block,
    prediction_rows,
)
from transferlab.evaluation.selection import Selector
from transferlab.inference.predictor import load
from transferlab.rundir import predictions_csv, read_predictions
from transferlab.train import head_fit as headfit
from transferlab.train import optim
from transferlab.train import trainer as train
from transferlab.workflows.finetuning import finetune

TINY = {"image_size": 64, "batch_size": 8, "head_warmup_epochs": 2}

# -- the metric definitions, on a fixed prediction set worked out by hand

# P(class 1) for five images; truth 0, 0, 0, 1, 1. Predicted: 0, 1, 0, 1, 0.
P1 = [0.1, 0.65, 0.15, 0.85, 0.35]
LABELS = torch.tensor([0, 0, 0, 1, 1])


def fixed_logits() -> torch.Tensor:
    p = torch.tensor(P1, dtype=torch.float64)
    return torch.stack([1 - p, p], 1).log().float()


def test_metric_block_matches_hand_computed_values():
    block = metric_block(fixed_logits(), LABELS, ("ok", "bad"), "test")
    assert block["confusion"] == {"rows": "true", "columns": "predicted", "labels": ["ok", "bad"],
                                  "matrix": [[2, 1], [1, 1]]}
    assert block["accuracy"] == 0.6
    assert block["balanced_accuracy"] == round((2 / 3 + 1 / 2) / 2, 4)  # mean recall
    assert block["macro_f1"] == round((2 / 3 + 1 / 2) / 2, 4)
    assert block["per_class"]["ok"] == {"precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "support": 3}
    assert block["per_class"]["bad"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert block["roc_auc"] == round(5 / 6, 4)  # 5 of the 6 (positive, negative) pairs ordered right
    assert block["average_precision"] == round(0.5 * 1 + 0.5 * 2 / 3, 4)
    assert block["positive_class"] == "bad"
    nll = -sum(math.log(p if y else 1 - p) for p, y in zip(P1, LABELS.tolist())) / 5
    assert block["nll"] == round(nll, 4)
    # confidences 0.9 (right), 0.85 x2 (right), 0.65 x2 (wrong) in three of 15 bins
    assert block["ece"] == round(0.2 * 0.1 + 0.4 * 0.15 + 0.4 * 0.65, 4)


def test_multiclass_block_has_no_binary_keys_and_a_missing_class_does_not_count():
    logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])
    block = metric_block(logits, torch.tensor([0, 1, 1, 0]), ("a", "b", "c"), "val")
    assert "roc_auc" not in block and "positive_class" not in block
    assert block["per_class"]["c"]["support"] == 0
    assert block["balanced_accuracy"] == 0.5  # recall 0.5 (a) and 0.5 (b); c has no images (not 1/3)


def test_prediction_rows_round_trip(tmp_path):
    probs = fixed_logits().softmax(1)
    rows = prediction_rows(["b.png", "a.png", "c.png", "e.png", "d.png"], LABELS.tolist(), probs, ("ok", "bad"))
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    (tmp_path / "p.csv").write_text(predictions_csv(rows, ("ok", "bad")))
    back = read_predictions(tmp_path / "p.csv")
    assert back == rows and back[0]["predicted"] == "bad" and back[0]["correct"] == 0  # "a.png" is the 0.65 one


def test_class_weights_are_inverse_frequency():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 2)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0]))
    assert torch.isclose(weights[torch.tensor([0, 0, 0, 1])].mean(), torch.tensor(1.0))


def test_temperature_scaling_lowers_the_nll_of_overconfident_logits():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (200,))
    logits = torch.randn(200, 2) + 1.5 * torch.nn.functional.one_hot(labels, 2)
    flipped = torch.rand(200) < 0.2
    logits[flipped] = logits[flipped].flip(1)
    logits = logits * 6  # overconfident
    t = fit_temperature(logits, labels)
    nll = torch.nn.functional.cross_entropy
    assert t > 1.5 and nll(logits / t, labels) < nll(logits, labels) - 0.1
    # all right on validation: the optimum is T -> 0; the bound keeps the head finite
    separable = torch.tensor([[2.0, -2.0], [-3.0, 3.0]] * 20)
    assert 0.05 <= fit_temperature(separable, torch.tensor([0, 1] * 20)) < 1


# -- selection


def test_selector_keeps_the_best_epoch_and_stops_after_patience():
    net = torch.nn.Linear(2, 2)
    selector = Selector("accuracy", patience=2)
    states = {}
    for epoch, acc in enumerate([0.5, 0.8, 0.7, 0.75], start=1):
        with torch.no_grad():
            net.weight.fill_(epoch)
        states[epoch] = net.weight.clone()
        stop = selector.update(epoch, {"accuracy": acc, "nll": 1.0}, net)
        assert stop == (epoch == 4)
    selector.restore(net)
    assert torch.equal(net.weight, states[2])
    summary = selector.summary(4)
    assert summary["best_epoch"] == 2 and summary["best_value"] == 0.8 and summary["stopped_early"]
    resumed = Selector("accuracy", patience=2)
    resumed.load_state_dict(selector.state_dict())
    assert resumed.summary(4) == summary


def test_loss_selection_minimises_and_no_metric_keeps_the_last_epoch():
    net = torch.nn.Linear(2, 2)
    selector = Selector("loss")
    for epoch, nll in enumerate([0.9, 0.4, 0.6], start=1):
        selector.update(epoch, {"nll": nll}, net)
    assert selector.summary(3)["best_epoch"] == 2 and selector.summary(3)["best_value"] == 0.4
    assert Selector(None).summary(3) == {"metric": None, "split": None, "best_epoch": 3, "kept": "last epoch",
                                         "stopped_early": False}


def test_roc_auc_selection_needs_two_classes(tmp_path):
    three = make_folder(tmp_path / "three", {"train": 3, "val": 2},
                        {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)})
    with pytest.raises(TransferlabError, match="ROC-AUC needs two classes"):
        train.Trainer(make_config(data=str(three), select_metric="roc_auc"))


def test_config_roles_and_the_old_spelling():
    assert make_config().carve_fraction == 0.0 and make_config().selection is None
    assert make_config(early_stopping=2).selection == "loss" and make_config(early_stopping=2).carve_fraction == 0.15
    assert make_config(select_metric="macro_f1", val_fraction=0.3).carve_fraction == 0.3
    for bad in ({"select_metric": "f2"}, {"early_stopping": -1}, {"val_fraction": 1.0}, {"class_weights": "x"}):
        with pytest.raises(TransferlabError):
            make_config(**bad)


# -- data roles


def test_three_folder_tree_uses_all_three_and_carving_never_touches_test(tmp_path):
    three = make_folder(tmp_path / "three", {"train": 6, "val": 3, "test": 4})
    ds = resolve_data(str(three))
    assert (ds.test_source, ds.val_source, len(ds.train), len(ds.val), len(ds.test)) == ("test", "val", 12, 6, 8)
    assert resolve_data(str(three), val_fraction=0.5).val == ds.val  # its own val/ wins over carving
    two = make_folder(tmp_path / "two", {"train": 6, "val": 3})
    ds = resolve_data(str(two))
    assert ds.test_source == "val" and ds.val is None
    bare = make_folder(tmp_path / "bare", {"": 10})
    plain, carved = resolve_data(str(bare), seed=3), resolve_data(str(bare), seed=3, val_fraction=0.25)
    assert carved.test_files() == plain.test_files() and carved.val_source == "carved"
    train_files = {p.name for p in carved.train.paths}
    assert len(carved.val) == 4 and not train_files & {p.name for p in carved.val.paths}
    assert train_files | {p.name for p in carved.val.paths} == {p.name for p in plain.train.paths}


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


def test_cli_names_the_roles(tmp_path):
    data = make_folder(tmp_path / "bare", {"": 6})
    proc = run_cli("train", "--data", data, "--val-fraction", "0.2", "--epochs", "1", "--image-size", "64",
                   "--head-warmup-epochs", "1", "--out", tmp_path / "run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "note: --val-fraction now sizes the validation split carved from train" in proc.stderr
    assert "last epoch kept" in proc.stdout and "report:" in proc.stdout
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
