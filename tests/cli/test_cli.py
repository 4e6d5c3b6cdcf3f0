"""The command line end to end, in this process: train, evaluate, predict, models, options and their errors."""

import json

import pytest
import torch
from helpers import assert_one_line_error, make_folder, run_cli
from safetensors import safe_open

from transferlab.config import RunConfig, make_config
from transferlab.inference.forward import use_bf16
from transferlab.inference.predictor import load

TINY = ["--model", "mobilenet_v2", "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--quiet"]  # tiny crops


def test_bad_options_are_one_clear_line(tmp_path):
    # Bad images, folders, checkpoints and weights: see the corpus in tests/contract/test_bad_input.py.
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = make_folder(tmp_path / "ok", {"train": 2, "val": 1})
    out = tmp_path / "out"
    cases = [
        (["--data", tmp_path / "nope"], ["no such directory"]),
        (["--data", empty], ["no class folders"]),
        (["--data", ok, "--model", "resnet9000"], ["--model resnet9000"]),
        (["--data", ok, "--freeze", "layer9"], ["--freeze layer9", "stage1"]),
        (["--data", ok, "--epochs", "0"], ["--epochs must be positive"]),
        (["--data", ok, "--lr", "-1"], ["--lr must be positive"]),
        (["--data", ok, "--batch-size", "0"], ["--batch-size must be positive"]),
    ]
    for args, needles in cases:  # a named model (a case may name another): the default, auto, would rank first
        assert_one_line_error(run_cli("train", "--model", "mobilenet_v2", *args, "--out", out, "--quiet"), *needles)
    assert not (out / "metrics.json").exists()


def test_train_evaluate_predict_end_to_end(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, *TINY, "--out", run)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["image_size"] == 32 and config["epochs"] == 2 and config["preset"] == "default"
    # a row per stage, then one per epoch
    stages = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("stage") or r["epoch"] for r in stages] == ["decode", "features", "head_warmup", 1, 2]
    assert [r["wall_s"] for r in stages] == sorted(r["wall_s"] for r in stages)
    rows = stages[3:]
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"test_acc", "test", "selection", "epochs", "wall_s", "train_images_per_s", "class_names"}
    assert "best_test_acc" not in metrics and metrics["selection"]["kept"] == "last epoch"
    assert metrics["precision"] == ("bf16" if use_bf16(torch.device("cpu")) else "fp32")  # what it computed in
    assert f"epochs on cpu ({metrics['precision']})" in (run / "report.html").read_text()
    assert metrics["class_names"] == ["blue", "red"] and metrics["test_acc"] == rows[-1]["test_acc"]
    with safe_open(str(run / "model.safetensors"), "pt") as fh:
        assert json.loads(fh.metadata()["class_names"]) == ["blue", "red"]
        assert "classifier.1.weight" in fh.keys()
    assert not (run / "checkpoint.pt").exists()

    proc = run_cli("evaluate", run, "--data", data, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == 8 and report["accuracy"] == pytest.approx(metrics["test_acc"])
    assert sum(map(sum, report["confusion"]["matrix"])) == 8 and set(report["per_class"]) == {"blue", "red"}
    for key, value in metrics["test"].items():  # one schema: the run's own test block (floats to 4 digits)
        assert report[key] == (pytest.approx(value, abs=2e-4) if isinstance(value, float) else value), key

    proc = run_cli("predict", run, data / "val" / "red" / "red_0.png", data / "val" / "blue")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 5 and lines[0]["path"].endswith("red_0.png")
    assert all(set(r["probabilities"]) == {"blue", "red"} and r["label"] in ("blue", "red") for r in lines)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in lines)

    assert_one_line_error(run_cli("train", "--data", data, *TINY, "--out", run), "finished run")
    assert_one_line_error(run_cli("predict", tmp_path / "nothing", data), "no trained model")


def test_flips_reach_the_run_and_its_report(tmp_path):
    data = make_folder(tmp_path / "tiles", {"train": 6, "val": 2},
                       classes={"cyan": (0, 200, 200), "olive": (120, 120, 0)})
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, *TINY[:-3], "--epochs", "1", "--flips", "d4", "--out", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "config.json").read_text())["flips"] == "d4"
    assert "random rotation and flip" in (run / "report.html").read_text()
    proc = run_cli("train", "--data", data, "--flips", "v", "--out", tmp_path / "x", "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--flips: invalid choice: 'v'" in proc.stderr.splitlines()[-1] and "d4" in proc.stderr.splitlines()[-1]


def test_python_api_predicts_like_the_cli(tmp_path, no_run_reports):
    """A model trained by the CLI: `transferlab predict` and `tl.load(run).predict` (paths or PIL) agree."""
    data = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    run = tmp_path / "r"
    assert run_cli("train", "--data", data, *TINY, "--epochs", "1", "--out", run).returncode == 0
    proc = run_cli("predict", run, data / "val")
    assert proc.returncode == 0, proc.stderr
    by_cli = {r["path"]: r for r in map(json.loads, proc.stdout.splitlines())}
    predictor = load(run)
    paths = sorted((data / "val").rglob("*.png"))
    from PIL import Image

    by_path = predictor.predict(paths)
    by_pil = predictor.predict([Image.open(p) for p in paths])
    assert len(by_cli) == len(paths) == 8
    for path, from_path, from_pil in zip(paths, by_path, by_pil):
        assert by_cli[str(path)] == {"path": str(path), **from_path} and from_pil == from_path


def test_resume_refuses_changed_options(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 4, "val": 2})
    run = tmp_path / "run"
    (run).mkdir()
    make_config(data=str(data), model="mobilenet_v2", image_size=64, epochs=2, out=str(run)).save(run / "config.json")
    proc = run_cli("train", "--out", run, "--resume", "--lr", "0.5", "--quiet")
    assert_one_line_error(proc, f"lr: {RunConfig().lr} -> 0.5", "--force")


def test_models_lists_families_and_stages():
    proc = run_cli("models", "resnet1*", "--all")  # no ResNet weights here: only --all lists them
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("resnet18 "))
    assert "resnet" in line and "stem layer1 layer2 layer3 layer4 body" in line


@pytest.mark.slow  # a second architecture (ResNet-18: 45 MB of weights) fine-tuned
def test_resnet18_trains_from_a_local_weights_file(tmp_path, no_run_reports):
    """No ResNet weights can be downloaded here: --weights PATH is how a user's own file is used."""
    import torchvision

    weights = tmp_path / "my-resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    data = make_folder(tmp_path / "colors", {"train": 4, "val": 2})
    run = tmp_path / "r18"
    proc = run_cli("train", "--data", data, "--model", "resnet18", "--weights", weights, "--image-size", "32",
                   "--epochs", "1", "--batch-size", "4", "--out", run, "--quiet")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["weights"]["source"] == "file" and metrics["weights"]["path"] == str(weights)
    with safe_open(str(run / "model.safetensors"), "pt") as fh:
        assert "fc.weight" in fh.keys() and fh.get_tensor("fc.weight").shape == (2, 512)
