"""examples/quickstart.ipynb runs top to bottom in a Jupyter kernel, with nothing beside the checkout, and shows its
work (what it may reference: tests/contract/test_examples.py)."""

from __future__ import annotations

import json
import math
import re

import pytest
from helpers import NOTEBOOK_TRAIN_PER_CLASS

pytestmark = pytest.mark.slow  # a Jupyter kernel trains and ranks on real images


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    return output.get("data", {}).get("text/plain", "")


@pytest.fixture(scope="module")
def executed(notebook_in_background) -> list[dict]:
    """The notebook's code cells, executed (conftest starts the kernel with the session; this waits for it)."""
    assert notebook_in_background is not None  # started whenever a test of this file is selected
    return notebook_in_background.result(timeout=900)


def _cell(cells: list[dict], marker: str) -> dict:
    return next(cell for cell in cells if marker in cell.source)


def test_the_notebook_runs_without_errors_or_a_stderr_flood(executed):
    outputs = [o for cell in executed for o in cell.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    stderr = "".join(o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr")
    assert len(stderr) < 300 and "IProgress" not in stderr, stderr


def test_training_shows_its_lines_and_a_growing_epoch_table(executed):
    cell = _cell(executed, "tl.finetune(")
    printed = "".join(o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")
    for line in ("elpv-mini: 2 classes (defective, functional)", "weights MobileNet_V2_Weights",
                 "head warm-up (10 epochs", "keeping ", "test (50 images, scored once"):
        assert line in printed, line
    shown = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    tables = [h for h in shown if "<table" in h]
    assert len(tables) == 1 and tables[0].count("<tr>") == 4  # header + 3 epochs (display updated in place)
    assert "val_loss" in tables[0] and "test_acc" not in tables[0]
    bars = [h for h in shown if "<progress" in h]  # one line per bar, kept as a record: no text flood
    epochs = [b for b in bars if ">epoch " in b]
    train = NOTEBOOK_TRAIN_PER_CLASS - round(0.15 * NOTEBOOK_TRAIN_PER_CLASS)  # 15% carved off for validation
    batches = math.ceil(2 * train / 32)  # batches of 32
    assert len(epochs) == 3 and all(f"{batches}/{batches} batch" in b for b in epochs), epochs


def test_the_result_shows_metrics_curves_and_confusion(executed):
    out = next(cell for cell in executed if cell.source.strip() == "result")
    html = out.outputs[0]["data"]["text/html"]
    assert "balanced acc" in html and "macro F1" in html
    assert "test (95% CI)" in html and "baseline: always" in html  # the test scores with their intervals
    assert "(95% CI " in out.outputs[0]["data"]["text/plain"]
    assert html.count("<img") >= 2 and "data:image/png;base64," in html
    assert len(out.outputs[0]["data"]["text/plain"]) < 300  # the repr is short
    scores = _text(_cell(executed, 'test["intervals"]').outputs[0])  # each score beside its interval
    assert re.search(r"'accuracy': \(0\.\d+, \[0\.\d+, [01]\.\d+\]\)", scores) and "'baseline': " in scores, scores
    frame = _cell(executed, "to_pandas").outputs[0]["data"]
    assert "text/html" in frame and "train_loss" in frame["text/html"]
    for marker in ("show_mistakes", "result.plot()"):
        assert any("image/png" in o.get("data", {}) for o in _cell(executed, marker).outputs), marker


def test_reprs_are_short(executed):
    for marker in ("tl.resolve_data(", "config  #", "predictor = tl.load"):
        text = "".join(_text(o) for o in _cell(executed, marker).outputs)
        assert 0 < len(text) < 400, (marker, text)
    files = json.loads(_text(_cell(executed, "iterdir").outputs[0]).replace("'", '"'))
    assert {"report.html", "test_predictions.csv", "model.safetensors", "metrics.json"} <= set(files)


def test_the_ranking_shows_as_a_table_with_its_pick(executed):
    out = _cell(executed, "tl.rank(").outputs
    html = next(o["data"]["text/html"] for o in out if o["output_type"] == "execute_result")
    assert "picked <b>" in html and html.count("<tr>") >= 3 and "probe_acc" in html
    picked = _text(_cell(executed, "ranking.picked").outputs[0])
    assert any(name in picked for name in ("mobilenet_v2", "tf_efficientnet_lite"))


def test_a_time_limited_run_shows_its_stages_and_its_plan(executed):
    text = "".join(_text(o) for o in _cell(executed, "time_limit=").outputs)
    for needle in ("('decode',", "('head_warmup',", "'limit_s': 20.0", "'epochs_run':", "'why':"):
        assert needle in text, (needle, text)
    printed = "".join(o["text"] for o in _cell(executed, "time_limit=").outputs if o["output_type"] == "stream")
    assert "time limit 20 s:" in printed and "planning" in printed, printed
