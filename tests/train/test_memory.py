"""The memory of a training step (train.loop), measured on small crops first: refused with the numbers."""

import torch
from helpers import run_cli

from transferlab.models.model import create_model
from transferlab.train import loop as memory


def _saved_by_a_real_step(model, crop: int, batch: int) -> int:
    params = {t.untyped_storage().data_ptr() for t in (*model.net.parameters(), *model.net.buffers())}
    saved = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    images = torch.rand(batch, 3, crop, crop).to(memory_format=torch.channels_last)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.net(images)
    return sum(saved.values())


def test_the_estimate_from_two_small_crops_matches_a_real_batch():
    model = create_model("mobilenet_v2", 3)
    model.net.train()
    estimate = memory.activation_bytes(model, 160, 3, torch.device("cpu"), "fp32")
    assert model.net.training  # the measurement leaves the mode (and BatchNorm's statistics) as they were
    real = _saved_by_a_real_step(model, 160, 3)
    assert real * 0.9 < estimate < real * 1.15, (estimate, real)
    assert memory.activation_bytes(model, 320, 3, torch.device("cpu"), "fp32") > 3.5 * estimate  # pixels, not sides


def test_a_step_that_cannot_fit_is_refused_before_any_image_is_decoded(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * 10**9)
    out = tmp_path / "run"
    proc = run_cli("train", "--data", image_folder, "--out", out, "--model", "mobilenet_v2", "--train-image-size",
                   "1024", "--batch-size", "16", "--epochs", "1", "--quiet")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("transferlab: error: --train-image-size 1024: a training step of 16 images at 1024 px")
    assert "GB of memory are available; lower --train-image-size or --batch-size" in line and "\n" not in line
    assert not out.exists()  # nothing left behind
    monkeypatch.setattr(memory, "available_memory", lambda: 1)  # a probe's body runs without autograd: not measured
    proc = run_cli("train", "--data", image_folder, "--out", out, "--model", "mobilenet_v2", "--image-size", "64",
                   "--freeze", "body", "--epochs", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
