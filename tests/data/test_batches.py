"""Training batches: seeded crops that parallel workers, a resumed epoch and several processes reproduce."""

import torch
from helpers import make_image, random_images

from transferlab.data import batches
from transferlab.data.datasets import decode_one
from transferlab.data.transforms import Preprocessing

PRE = Preprocessing(crop_size=48, resize_size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


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


def test_a_resumed_epoch_sees_the_same_batches():
    images = random_images(10)
    labels = torch.arange(10)
    pre = Preprocessing(crop_size=16, resize_size=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    whole = list(batches.train_batches(images, labels, 3, pre, (0.25, 1.0), seed=1, epoch=2))
    rest = list(batches.train_batches(images, labels, 3, pre, (0.25, 1.0), seed=1, epoch=2, start_step=2))
    assert [n for _, _, n in whole] == [3, 3, 3, 1] and len(rest) == 2
    for (x, y, n), (x2, y2, n2) in zip(whole[2:], rest):
        assert torch.equal(x, x2) and torch.equal(y, y2) and n == n2
    other_epoch = list(batches.train_batches(images, labels, 3, pre, (0.25, 1.0), seed=1, epoch=3))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(whole, other_epoch))


def test_process_shares_make_up_the_global_batch():
    images = random_images(11)
    labels = torch.arange(11)
    pre = Preprocessing(crop_size=16, resize_size=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    one = list(batches.train_batches(images, labels, 4, pre, (0.25, 1.0), seed=3, epoch=1))
    two = [list(batches.train_batches(images, labels, 4, pre, (0.25, 1.0), seed=3, epoch=1, rank=r, world_size=2))
           for r in (0, 1)]
    assert [n for _, _, n in one] == [4, 4, 3]
    assert [len(b) for b in two] == [3, 3]
    for (x, y, n), (x0, y0, n0), (x1, y1, n1) in zip(one, *two):
        assert n0 == n1 == n
        assert torch.equal(x[0::2], x0) and torch.equal(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    assert len(two[0][2][1]) == 2 and len(two[1][2][1]) == 1  # the last batch splits unevenly
    # a last batch smaller than the number of processes is dropped
    assert len(batches.global_batches(torch.arange(9), 4, world_size=2)) == 2
    assert len(batches.global_batches(torch.arange(9), 4, world_size=1)) == 3
