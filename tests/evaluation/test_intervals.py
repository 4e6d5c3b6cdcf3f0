"""95 % intervals of test scores, the majority-class baseline, and paired differences between models."""

import numpy as np
import pytest
import torch
from torchmetrics.functional import classification as tm

from transferlab.console import score_text
from transferlab.evaluation.intervals import (
    bootstrap_intervals,
    paired_difference,
    uncertainty,
    wilson,
)
from transferlab.evaluation.metrics import metric_block


def test_wilson_matches_the_textbook_values():
    lo, hi = wilson(43, 50)  # 0.86 on 50 images
    assert (round(lo, 3), round(hi, 3)) == (0.738, 0.930)
    assert wilson(50, 50)[1] == 1.0 and wilson(50, 50)[0] < 0.93  # never the degenerate [1, 1]
    assert wilson(0, 0) is None


def test_one_resample_of_all_ones_is_the_metric_itself():
    """The weighted formulas behind the bootstrap give torchmetrics' values when every image weighs 1."""
    from transferlab.evaluation import intervals

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 2)  # rounded: ties
    assert intervals._auc(np.ones((1, 300)), y == 1, s)[0] == pytest.approx(
        float(tm.binary_auroc(torch.tensor(s), torch.tensor(y))), abs=1e-4)
    y = rng.integers(0, 5, 400)
    p = rng.random((400, 5))
    p[np.arange(400), y] += 0.4
    assert intervals._macro_f1(np.ones((1, 400)), y, p.argmax(1), 5)[0] == pytest.approx(
        float(tm.multiclass_f1_score(torch.tensor(p), torch.tensor(y), num_classes=5, average="macro")), abs=1e-6)


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_more_images():
    rng = np.random.default_rng(0)

    def width(n):
        y = np.arange(n) % 2
        p = np.stack([1 - y, y], 1) * 0.3 + rng.random((n, 2)) * 0.5
        found = bootstrap_intervals(y, p)
        lo, hi = found["balanced_accuracy"]
        recall = [(p.argmax(1)[y == c] == c).mean() for c in (0, 1)]
        assert lo <= np.mean(recall) <= hi
        assert found["roc_auc"][0] <= found["roc_auc"][1]
        return hi - lo

    assert width(1000) < width(60) / 2


def test_a_test_block_carries_its_intervals_and_baseline():
    labels = torch.tensor([0] * 30 + [1] * 20)
    logits = torch.zeros(50, 2)
    logits[torch.arange(50), labels] = 2.0
    logits[:5] = torch.tensor([0.0, 2.0])  # 5 of class 0 wrong
    block = metric_block(logits, labels, ["cat", "dog"], "test", intervals=True)
    assert block["accuracy"] == 0.9
    lo, hi = block["intervals"]["accuracy"]
    assert lo < 0.9 < hi and block["intervals"]["level"] == 0.95
    assert {"balanced_accuracy", "macro_f1", "roc_auc"} <= set(block["intervals"])
    assert block["baseline"]["class"] == "cat" and block["baseline"]["accuracy"] == 0.6
    assert block["baseline"]["balanced_accuracy"] == 0.5
    assert score_text(block) == f"0.9000 (95% CI {lo:.2f}–{hi:.2f})"
    assert "intervals" not in metric_block(logits, labels, ["cat", "dog"], "val")


def test_paired_difference_tells_a_tie_from_a_gap():
    labels = np.arange(200) % 2
    a = np.ones(200)
    tie = a.copy()
    tie[:2] = 0  # two images apart
    assert not paired_difference(a, tie, labels)["separates"]
    gap = a.copy()
    gap[:60] = 0
    found = paired_difference(a, gap, labels)
    assert found["separates"] and found["interval"][0] > 0.2 and found["difference"] == pytest.approx(0.3)


def test_intervals_are_reproducible():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, 90), rng.random((90, 3))
    assert uncertainty(y, p, ["a", "b", "c"]) == uncertainty(y, p, ["a", "b", "c"])
