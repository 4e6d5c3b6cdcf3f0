"""The fast paths must compute what the plain paths compute."""

import torch
from conftest import make_folder, make_image
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from transferlab import cache, train
from transferlab.data import decode_one, resolve_data
from transferlab.models import create_model
from transferlab.transforms import Preprocessing, normalize
from transferlab.weights import load_state_dict, resolve_weights

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


def test_parallel_crops_match_sequential_crops(tmp_path, monkeypatch):
    images = [decode_one(make_image(tmp_path / f"i{i}.png", (20 * i, 100, 50), seed=i), PRE) for i in range(10)]
    labels = torch.arange(10) % 2
    monkeypatch.setattr(train, "_augment_workers", lambda: 1)
    sequential = list(train.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2))
    monkeypatch.setattr(train, "_augment_workers", lambda: 4)
    parallel = list(train.train_batches(images, labels, 4, PRE, (0.25, 1.0), seed=3, epoch=2))
    assert len(sequential) == len(parallel) == 3
    for a, b in zip(sequential, parallel):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_probe_features_give_the_full_models_logits():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3).freeze("body").eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    features = train.body_features(model, images, PRE, torch.device("cpu"))
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
    fast = train.eval_batch(cache.decode(paths, pre, quiet=True, disk=False).images, pre)
    with torch.no_grad():
        expected = model(plain)
    got = train.predict_logits(model, fast, pre, torch.device("cpu"))
    assert torch.equal(expected.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=1e-2)  # channels-last kernels sum in another order


def test_probe_run_trains_only_the_head(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 6, "val": 3})
    ds = resolve_data(str(data))
    trainer = train.Trainer(train.RunConfig(data=str(data), freeze="body", epochs=3, image_size=48, batch_size=4,
                                            probe_views=2), quiet=True, dataset=ds)
    body_before = {k: v.clone() for k, v in create_model("mobilenet_v2", 2,
                                                         load_state_dict(trainer.weights.path)).net.state_dict().items()
                   if not k.startswith("classifier.1")}
    result = trainer.fit()
    assert result.metrics["probe"] and len(trainer.train_features) == 2
    after = result.model.net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())
    assert len(result.history) == 3
