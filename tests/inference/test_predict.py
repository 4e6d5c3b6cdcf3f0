"""Predict: the Python API (paths, PIL, tensors; TTA) and the CLI (folders, JSON lines, CSV)."""

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_image, run_cli
from PIL import Image

from transferlab import TransferlabError
from transferlab.cli.commands import main
from transferlab.data.datasets import load_rgb, to_tensor
from transferlab.data.transforms import center_crop, normalize
from transferlab.inference.predictor import TTA_VIEWS, load, tta_views


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_tta_views_are_center_flip_and_four_corners():
    image = torch.arange(3 * 5 * 7, dtype=torch.uint8).view(3, 5, 7)
    views = tta_views(image, 3)
    assert views.shape == (len(TTA_VIEWS), 3, 3, 3) == (6, 3, 3, 3)
    center = image[:, 1:4, 2:5]
    expected = [center, center.flip(-1), image[:, :3, :3], image[:, :3, -3:], image[:, -3:, :3], image[:, -3:, -3:]]
    for name, got, want in zip(TTA_VIEWS, views, expected):
        assert torch.equal(got, want), name


def test_tta_averages_softmax_over_the_six_views(run):
    run_dir, data = run
    predictor = load(run_dir, device="cpu")
    path = data / "val" / "red" / "red_0.png"
    pre = predictor.pre
    resized = predictor._tensor(path)
    assert min(resized.shape[-2:]) == pre.resize_size and max(resized.shape[-2:]) > pre.crop_size
    c = pre.crop_size
    center = center_crop(resized, c)
    views = torch.stack([center, center.flip(-1), resized[:, :c, :c], resized[:, :c, -c:],
                         resized[:, -c:, :c], resized[:, -c:, -c:]])
    with torch.inference_mode():
        expected = predictor.model(normalize(views, pre)).softmax(1).mean(0)
        plain = predictor.model(normalize(center[None], pre)).softmax(1)[0]
    got = predictor.predict_proba([path], tta=True)[0]
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(predictor.predict_proba([path])[0], plain, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-6)  # the views really differ


def test_predict_accepts_paths_pil_images_and_uint8_tensors(run):
    run_dir, data = run
    predictor = load(run_dir, device="cpu")
    paths = sorted((data / "val").rglob("*.png"))
    by_path = predictor.predict(paths, batch_size=4)
    assert len(by_path) == len(paths) == 6
    tensors = [to_tensor(load_rgb(p)) for p in paths]
    for other in (predictor.predict([Image.open(p) for p in paths]), predictor.predict(tensors),
                  predictor.predict(torch.stack(tensors))):
        assert [r["label"] for r in other] == [r["label"] for r in by_path]
        for a, b in zip(other, by_path):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)
    single = predictor.predict(paths[0], tta=True)
    assert len(single) == 1 and set(single[0]["probabilities"]) == {"blue", "red"}
    assert sum(single[0]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert predictor.predict([]) == []
    with pytest.raises(TransferlabError, match="uint8 RGB tensors"):
        predictor.predict([torch.zeros(3, 8, 8)])
    with pytest.raises(TransferlabError, match="batch_size must be positive"):
        predictor.predict(paths, batch_size=0)


def test_cli_predicts_folders_recursively_as_json_and_csv(run, tmp_path, capsys):
    run_dir, data = run
    nested = tmp_path / "inbox"
    make_image(nested / "a" / "b" / "deep.jpg", (200, 40, 40), seed=7)
    make_image(nested / "top.png", (40, 40, 200), seed=8)
    (nested / "notes.txt").write_text("not an image")
    single = data / "val" / "red" / "red_1.png"

    proc = run_cli("predict", run_dir, single, nested, "--format", "csv", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0] == ["path", "predicted", "prob_blue", "prob_red", "error"]  # test_predictions.csv's names
    assert [r[0] for r in rows[1:]] == [str(single), str(nested / "a" / "b" / "deep.jpg"), str(nested / "top.png")]
    for row in rows[1:]:
        probs = dict(zip(("blue", "red"), map(float, row[2:4])))
        assert row[4] == ""
        assert row[1] == max(probs, key=probs.get) and sum(probs.values()) == pytest.approx(1, abs=1e-4)

    assert main(["predict", str(run_dir), str(data / "val"), "--tta"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6 and all(set(r) == {"path", "label", "probabilities"} for r in lines)
    api = load(run_dir, device="cpu").predict([r["path"] for r in lines], tta=True)
    for line, expected in zip(lines, api):
        assert line["label"] == expected["label"]
        assert line["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)


def test_cli_predict_errors_are_one_line(run, tmp_path, capsys):
    run_dir, _ = run
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    cases = [(["--batch-size", "0", empty], "--batch-size must be positive"),
             ([empty], "no image files"),
             ([tmp_path / "missing.jpg"], "no such file"),
             ([fifo], "pipe.jpg: not a regular file"),
             (["/dev/null"], "/dev/null: not a regular file"),
             ([broken], "1 of 1 images could not be read")]
    for args, needle in cases:
        assert main(["predict", str(run_dir), *map(str, args)]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("transferlab: error: ") and needle in lines[0], lines
    assert "broken.jpg" in json.loads(captured.out)["error"]  # the bad image's own row


def test_predict_folder_names_link_loops_and_counts_unread_photos(run, tmp_path, capsys):
    """A folder is listed as training lists a class folder: no image is passed over in silence."""
    run_dir, _ = run
    inbox = tmp_path / "inbox"
    make_image(inbox / "ok.png", (200, 40, 40))
    make_image(tmp_path / "phone.png", (200, 40, 40)).rename(inbox / "phone.heic")  # a name it does not read
    (inbox / "loop1.jpg").symlink_to("loop2.jpg")
    (inbox / "loop2.jpg").symlink_to("loop1.jpg")
    assert main(["predict", str(run_dir), str(inbox)]) == 2
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["loop1.jpg", "loop2.jpg", "ok.png"]
    assert all("Too many levels of symbolic links" in r["error"] for r in rows[:2]) and "label" in rows[2]
    assert "ignoring 1 file (1 .heic) that transferlab cannot read" in err


def test_evaluate_takes_the_data_the_run_records(run, tmp_path, capsys, monkeypatch):
    run_dir, data = run
    assert main(["evaluate", str(run_dir), "--data", str(data)]) == 0
    given = json.loads(capsys.readouterr().out)
    monkeypatch.chdir(tmp_path)  # from another folder: the run's recorded data is found all the same
    assert main(["evaluate", str(run_dir)]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert recorded["data"] == str(data) and recorded["accuracy"] == given["accuracy"]
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "data": "gone/elsewhere"}))
    assert main(["evaluate", str(moved)]) == 0  # the folder it resolved to (metrics.json's data_root)
    assert json.loads(capsys.readouterr().out)["accuracy"] == given["accuracy"]
    metrics = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps({**metrics, "data_root": "gone/too"}))
    assert main(["evaluate", str(moved)]) == 2
    assert "the run's data 'gone/elsewhere' is not there from here; give --data DIR" in capsys.readouterr().err
