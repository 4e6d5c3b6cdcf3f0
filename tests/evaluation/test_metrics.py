"""The metrics and the epoch selection, on fixed prediction sets worked out by hand."""

from __future__ import annotations

import math

import torch

from transferlab.evaluation.metrics import class_weights, fit_temperature, metric_block, prediction_rows
from transferlab.evaluation.selection import Selector
from transferlab.rundir import predictions_csv, read_predictions

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
