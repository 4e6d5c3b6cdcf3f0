"""Export: ONNX and TorchScript files that match PyTorch at several batch sizes, and ONNX without torch."""

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import photo_subset, run_reports_off

import transferlab
from transferlab import TransferlabError
from transferlab.cli.commands import main
from transferlab.config import make_config
from transferlab.data.transforms import normalize
from transferlab.inference import export as E
from transferlab.inference.forward import eval_batch
from transferlab.inference.predictor import load
from transferlab.workflows.finetuning import finetune


@pytest.fixture
def run(tiny_run):
    return tiny_run


def real_batch(run_dir, data, n):
    """``n`` validation images preprocessed exactly as the Predictor does (float32 NCHW)."""
    predictor = load(run_dir, device="cpu")
    paths = sorted((data / "val").rglob("*.png"))[:n]
    return predictor, normalize(eval_batch([predictor._tensor(p) for p in paths], predictor.pre), predictor.pre,
                                channels_last=False)


@pytest.mark.slow  # the ONNX exporter: 7 s for a tiny MobileNetV2 (tiny_onnx exports once for the session)
def test_onnx_export_matches_pytorch_with_a_dynamic_batch(tiny_onnx):
    run_dir, data, result = tiny_onnx  # E.export_model(run_dir, "onnx"), once for the session
    assert result.path == run_dir / "model.onnx" and result.metadata_path == run_dir / "model.json"
    assert result.max_abs_diff <= 1e-4 and len(set(result.batch_sizes)) >= 2
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["class_names"] == ["blue", "red"] and meta["format"] == "onnx" and meta["file"] == "model.onnx"
    assert meta["crop_size"] == 64 and meta["resize_size"] == 73 and meta["interpolation"] == "bilinear"
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["input_name"] == "input"
    assert meta["exports"] == {"onnx": {"file": "model.onnx", "parity": meta["parity"]}}

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]
    predictor, batch = real_batch(run_dir, data, 5)
    for n in (1, 2, 5):  # batch sizes other than the export example's (2)
        with torch.inference_mode():
            expected = predictor.model.net(batch[:n]).numpy()
        got = session.run(None, {"input": batch[:n].numpy()})[0]
        assert got.shape == (n, 2) and np.abs(got - expected).max() <= 1e-4


def test_torchscript_export_from_the_cli(run, tmp_path, capsys):
    run_dir, data = run
    out = tmp_path / "exported" / "classifier.ts"
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max abs difference from PyTorch" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["format"] == "torchscript" and meta["file"] == "classifier.ts"
    assert meta["class_names"] == ["blue", "red"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["classifier.json", "classifier.ts"]  # no temp files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(out))
    predictor, batch = real_batch(run_dir, data, 4)
    with torch.inference_mode():
        for n in (1, 4):
            assert (module(batch[:n]) - predictor.model.net(batch[:n])).abs().max() <= 1e-4


@pytest.mark.slow  # needs the session's ONNX export (tiny_onnx)
def test_a_mismatch_fails_and_leaves_the_old_file(tiny_onnx, tmp_path, monkeypatch):
    run_dir = tiny_onnx[0]
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous export")
    real = E._run_exported
    # skip the slow exporter: the file "exported" is the good one from before, its check is made to fail
    monkeypatch.setattr(E, "_export_onnx", lambda _net, _example, path: shutil.copyfile(run_dir / "model.onnx", path))

    def off_by_a_little(fmt, path):
        run_it = real(fmt, path)
        return lambda x: run_it(x) + 1e-3

    monkeypatch.setattr(E, "_run_exported", off_by_a_little)
    # 1e-3 added on top of the export's own rounding (about 1e-6, either sign)
    with pytest.raises(TransferlabError, match=r"differs from PyTorch by (1\.0\de-03|9\.9\de-04).*not written"):
        E.export_model(run_dir, "onnx", out=out)
    assert out.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_errors_are_one_line(run, tmp_path, capsys):
    run_dir, _ = run
    cases = [([str(tmp_path / "nope")], "no trained model"),
             ([str(run_dir), "--out", str(tmp_path / "model.json")], "give the model file another suffix")]
    for args, needle in cases:
        assert main(["export", *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("transferlab: error: ") and needle in lines[0], lines
    with pytest.raises(TransferlabError, match="2 or more different"):
        E.export_model(run_dir, "onnx", batch_sizes=(4, 4))


TORCH_FREE = textwrap.dedent("""
    import json, sys, types
    src, model, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    # load transferlab.inference.export without the package __init__ (which imports torch for the training API)
    package = types.ModuleType("transferlab")
    package.__path__ = [src]
    sys.modules["transferlab"] = package
    from transferlab.inference.export import onnx_predict
    results = onnx_predict(model, paths)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
    assert not loaded, loaded
    print(json.dumps(results))
""")


@pytest.mark.slow  # trains on real photos; a fresh interpreter
def test_onnx_alone_predicts_like_pytorch_on_hotdog_mini(hotdog_mini, tmp_path):
    run_dir = tmp_path / "hotdog"
    # trained on 40 photos a class (of 100): the subject is the two predictors on the 50 real test photos, whose
    # probabilities stay as far from 0.5 as with all of them (closest 0.05); not the model's accuracy
    data = photo_subset(hotdog_mini, tmp_path / "hotdog-mini", 40)
    with run_reports_off():
        finetune(make_config(data=str(data), model="mobilenet_v2", image_size=96, epochs=1, out=str(run_dir)),
                 quiet=True)
    E.export_model(run_dir, "onnx")
    paths = sorted(str(p) for p in (hotdog_mini / "val").rglob("*.jpg"))
    assert len(paths) == 50
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, str(Path(transferlab.__file__).parent),
                           str(run_dir / "model.onnx"), *paths], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    alone = json.loads(proc.stdout)
    expected = load(run_dir, device="cpu").predict(paths)
    assert [r["label"] for r in alone] == [r["label"] for r in expected]
    worst = max(abs(a["probabilities"][c] - b["probabilities"][c])
                for a, b in zip(alone, expected) for c in ("hotdog", "not_hotdog"))
    assert worst < 0.02, worst  # PIL's resize vs torchvision's antialiased resize: close, not identical
