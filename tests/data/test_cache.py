"""The decode and feature caches: what comes back from them equals what was computed."""

import torch
from helpers import make_image

from transferlab.data import cache
from transferlab.data.datasets import decode_one
from transferlab.data.transforms import Preprocessing

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


def test_feature_cache_entry_needs_the_same_key_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "home"))  # it damages every entry: its own cache only
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
