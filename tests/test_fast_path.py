"""The fast paths must compute what the plain paths compute."""

import pytest
import torch
from conftest import make_folder, make_image
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from transferlab.config import RunConfig
from transferlab.data import batches, cache
from transferlab.data.datasets import decode_one, resolve_data
from transferlab.data.transforms import Preprocessing, normalize
from transferlab.inference import forward as infer
from transferlab.models.model import create_model, folded
from transferlab.models.weights import load_state_dict, resolve_weights
from transferlab.train import features
from transferlab.train import trainer as train

PRE = Preprocessing(crop_size=48, resize_size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_cached_tensors_equal_fresh_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cache, "_MEMORY", type(cache._MEMORY)())
    paths = [make_image(tmp_path / f"i{i}.png", (30 * i, 90, 200 - 20 * i), size=(70 + i, 60), seed=i)
             for i in range(5)]
    first = cache.decode(paths, PRE, quiet=True)
    assert len(list((tmp_path / "home" / "decoded").glob("*.safetensors"))) == 1
    cache._MEMORY.clear()
    from_disk = cache.decode(paths, PRE, quiet=True)
    for path, a, b in zip(paths, first.images, from_disk.images):
        fresh = decode_one(path, PRE)
        assert torch.equal(a, fresh) and torch.equal(b, fresh) and fresh.dtype == torch.uint8
        assert min(fresh.shape[1:]) == PRE.resize_size


def test_cache_is_invalidated_when_a_file_or_the_preprocessing_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))
    paths = [make_image(tmp_path / f"i{i}.png", (200, 40, 40), seed=i) for i in range(3)]
    key = cache.cache_key(paths, PRE, False)
    before = cache.decode(paths, PRE, quiet=True).images[1]
    make_image(paths[1], (40, 40, 200), seed=9)  # same name and size, new content
    assert cache.cache_key(paths, PRE, False) != key
    after = cache.decode(paths, PRE, quiet=True).images[1]
    assert not torch.equal(before, after) and torch.equal(after, decode_one(paths[1], PRE))
    bigger = Preprocessing(**{**PRE.to_dict(), "resize_size": 64})
    assert cache.cache_key(paths, bigger, False) != cache.cache_key(paths, PRE, False)


def test_parallel_and_prefetched_crops_match_sequential_crops(tmp_path, monkeypatch):
    images = [decode_one(make_image(tmp_path / f"i{i}.png", (20 * i, 100, 50), seed=i), PRE) for i in range(10)]
    labels = torch.arange(10) % 2
    sequential = list(batches.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2, prefetch=False))
    monkeypatch.setattr(batches, "_augment_workers", lambda: 1)
    prefetched = list(batches.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2))
    monkeypatch.setattr(batches, "_augment_workers", lambda: 4)
    parallel = list(batches.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2))
    resumed = list(batches.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2, start_step=1,
                                       prefetch=False))
    assert len(sequential) == len(prefetched) == len(parallel) == 3
    for a, b, c in zip(sequential, prefetched, parallel):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(sequential[1:], resumed, strict=True))
    assert not batches.prefetch_batches(torch.device("cpu")) and batches.prefetch_batches(torch.device("meta"))


def test_probe_features_give_the_full_models_logits():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3).freeze("body").eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    features = infer.body_features(model, images, PRE, torch.device("cpu"))
    with torch.no_grad():
        full = model(normalize(images, PRE))
        torch.testing.assert_close(model.head(features), full, atol=1e-5, rtol=1e-5)


def test_fast_eval_path_predicts_like_the_plain_torchvision_path(hotdog_mini):
    weights = resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    model = create_model("mobilenet_v2", 1000, load_state_dict(weights.path))
    model.net.load_state_dict(load_state_dict(weights.path))
    model.eval()
    pre = weights.preprocessing
    paths = sorted((hotdog_mini / "val" / "hotdog").iterdir())[:8]
    plain = torch.stack([MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(Image.open(p).convert("RGB"))
                         for p in paths])
    fast = infer.eval_batch(cache.decode(paths, pre, quiet=True, disk=False).images, pre)
    with torch.no_grad():
        expected = model(plain)
    got = infer.predict_logits(model, fast, pre, torch.device("cpu"), precision="fp32")
    assert torch.equal(expected.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=1e-2)  # channels-last kernels sum in another order


def test_probe_run_trains_only_the_head(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 6, "val": 3})
    ds = resolve_data(str(data))
    trainer = train.Trainer(RunConfig(data=str(data), freeze="body", epochs=3, image_size=48, batch_size=4,
                                            probe_views=2), quiet=True, dataset=ds)
    body_before = {k: v.clone() for k, v in create_model("mobilenet_v2", 2,
                                                         load_state_dict(trainer.weights.path)).net.state_dict().items()
                   if not k.startswith("classifier.1")}
    result = trainer.fit()
    assert result.metrics["probe"] and len(trainer.train_features) == 2
    after = result.model.net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())
    assert len(result.history) == 3


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_folded_batchnorm_gives_the_same_outputs_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    for module in model.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    fast = folded(model)
    assert fast.is_folded and folded(fast) is fast and not fast.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        expected = model(normalize(images, PRE))
        torch.testing.assert_close(fast.features(normalize(images, PRE)), model.features(normalize(images, PRE)),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(infer.predict_logits(model, images, PRE, torch.device("cpu"), precision="fp32"),
                               expected, atol=1e-4, rtol=1e-4)


def test_bf16_prediction_agrees_with_fp32_on_real_photos(hotdog_mini):
    weights = resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    model = create_model("mobilenet_v2", 1000)
    model.net.load_state_dict(load_state_dict(weights.path))
    pre = weights.preprocessing
    paths = sorted((hotdog_mini / "val").rglob("*.jpg"))
    images = infer.eval_batch(cache.decode(paths, pre, quiet=True, disk=False).images, pre)
    fp32 = infer.predict_logits(model, images, pre, torch.device("cpu"), precision="fp32")
    bf16 = infer.predict_logits(model, images, pre, torch.device("cpu"), precision="bf16")
    # 1000 ImageNet classes, many of them close: a few of the 50 top-1 labels may swap
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() >= 0.9
    assert (fp32.softmax(1) - bf16.softmax(1)).abs().max() < 0.25


def test_probe_features_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "colors", {"train": 6, "val": 3})
    config = RunConfig(data=str(data), freeze="body", epochs=2, image_size=48, batch_size=4, probe_views=2)
    first = train.Trainer(config, quiet=True).fit()
    entries = sorted((cache.cache_dir("features")).glob("*.safetensors"))
    assert len(entries) >= 3  # two training views and the test crops

    def no_body(*args, **kwargs):
        raise AssertionError("the body ran although its features were cached")

    monkeypatch.setattr(features, "body_features", no_body)
    second = train.Trainer(config, quiet=True).fit()
    assert second.history == [{**row, "wall_s": r2["wall_s"]} for row, r2 in zip(first.history, second.history)]
    # other crops, or no cache at all, run the body again
    with pytest.raises(AssertionError, match="the body ran"):
        train.Trainer(RunConfig(**{**config.to_dict(), "crop_scale": (0.5, 1.0)}), quiet=True).fit()
    with pytest.raises(AssertionError, match="the body ran"):
        train.Trainer(RunConfig(**{**config.to_dict(), "feature_cache": False}), quiet=True).fit()


def test_feature_cache_entry_needs_the_same_key_and_survives_damage(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).view(2, 3)

    key = {"images": "abc", "crop": "center"}
    torch.testing.assert_close(cache.features(key, compute), compute())
    assert len(calls) == 2
    cache.features(key, compute)
    assert len(calls) == 2  # read from disk
    cache.features({**key, "crop": "random"}, compute)
    assert len(calls) == 3
    for entry in cache.cache_dir("features").glob("*.safetensors"):
        entry.write_bytes(b"not a safetensors file")
    torch.testing.assert_close(cache.features(key, compute), compute())
