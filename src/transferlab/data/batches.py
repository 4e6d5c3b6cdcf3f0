"""The epoch's batches: shuffled, augmented uint8 images or cached features, and every seed formula.

Data order and crops are a function of (seed, epoch) alone, so a resumed epoch, a
prefetched one and one split over several processes see the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .transforms import Crop, Preprocessing, apply_crop, sample_crop

__all__ = ["Batch", "epoch_seed", "view_seed", "process_seed", "prefetch_batches", "global_batches",
           "train_batches", "probe_batches", "view_crops"]

Batch = tuple[torch.Tensor, torch.Tensor, int]  # this process's inputs, its labels, the global batch size


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of an epoch's order and crops."""
    return seed * 100_003 + epoch


def view_seed(seed: int, view: int) -> int:
    """The generator seed of a linear probe's augmented feature view (views start at 1)."""
    return seed * 7919 + view


def process_seed(seed: int, rank: int, epoch: int = 0) -> int:
    """The global torch seed of process ``rank`` > 0 (its dropout masks), from ``epoch`` on."""
    return seed + 1_000_003 * rank + epoch


def view_crops(images: Sequence[torch.Tensor], seed: int, view: int, scale: tuple[float, float],
               region: int | None, flips: str = "h") -> list[Crop]:
    """One augmented crop per image for probe view ``view``."""
    generator = torch.Generator().manual_seed(view_seed(seed, view))
    return [sample_crop(img, scale, generator, region, flips) for img in images]


def _augment_workers() -> int:
    """Threads that crop a batch: none beyond the prefetch thread on small machines."""
    return max(1, min(8, (os.cpu_count() or 1) // 4))


def prefetch_batches(device: torch.device) -> bool:
    """Whether to build the next training batch in a second thread: only when the model runs on an accelerator.

    On CPU the crops take about 1% of a step, and after each one the helper thread's
    OpenMP team spins on the cores the model needs: the full loop ran at 0.89 of the
    speed on pre-made tensors with a prefetch thread and 0.98 without (hotdog-mini,
    2 cores; ``bench/time_to_accuracy.py``, pipeline arm).
    """
    return device.type != "cpu"


def global_batches(order: torch.Tensor, batch_size: int, world_size: int = 1) -> list[torch.Tensor]:
    """``order`` cut into global batches; with several processes a last batch smaller than their count is dropped."""
    chunks = list(order.split(batch_size))
    if world_size > 1 and chunks and len(chunks[-1]) < world_size:
        chunks.pop()
    return chunks


def _draw_crops(images: Sequence[torch.Tensor], index: torch.Tensor, scale: tuple[float, float],
                generator: torch.Generator, region: int | None, flips: str) -> list[Crop]:
    return [sample_crop(images[i], scale, generator, region, flips) for i in index.tolist()]


def _augmented(images: Sequence[torch.Tensor], index: torch.Tensor, rank: int, world_size: int,
               pre: Preprocessing, scale: tuple[float, float], generator: torch.Generator,
               pool: ThreadPoolExecutor | None, region: int | None = None, flips: str = "h") -> torch.Tensor:
    # The crops of the whole global batch are drawn in order, then this process's share is resized
    # (in parallel where cores allow).
    crops = _draw_crops(images, index, scale, generator, region, flips)
    mine = [(images[i], crop) for i, crop in list(zip(index.tolist(), crops))[rank::world_size]]
    if pool is None:
        return torch.stack([apply_crop(img, crop, pre) for img, crop in mine])
    return torch.stack(list(pool.map(lambda item: apply_crop(item[0], item[1], pre), mine)))


def train_batches(images: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, pre: Preprocessing,
                  scale: tuple[float, float], seed: int, epoch: int, start_step: int = 0, rank: int = 0,
                  world_size: int = 1, prefetch: bool = True, region: int | None = None,
                  flips: str = "h") -> Iterator[Batch]:
    """Shuffled, augmented uint8 batches (this process's share); crops drawn as :func:`sample_crop` does.

    With ``prefetch`` the next batch is built in a second thread while the model runs
    (see :func:`prefetch_batches`); without it, in this thread when it is asked for.

    The order and crops depend only on (seed, epoch): every process draws the crops of
    the whole global batch and resizes its own share (every ``world_size``-th image from
    ``rank``), and batches before ``start_step`` (done before a resume) have their crops
    drawn but not made, so the random stream goes on exactly as in an uninterrupted epoch.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(len(images), generator=generator)
    chunks = global_batches(order, batch_size, world_size)
    for chunk in chunks[:start_step]:
        _draw_crops(images, chunk, scale, generator, region, flips)
    chunks = chunks[start_step:]
    if not prefetch:
        for chunk in chunks:
            batch = _augmented(images, chunk, rank, world_size, pre, scale, generator, None, region, flips)
            yield batch, labels[chunk[rank::world_size]], len(chunk)
        return
    if not chunks:
        return
    workers = _augment_workers()
    crop_pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        with ThreadPoolExecutor(1) as pool:
            def submit(chunk: torch.Tensor):
                return pool.submit(_augmented, images, chunk, rank, world_size, pre, scale, generator, crop_pool,
                                   region, flips)

            pending = submit(chunks[0])
            for i, chunk in enumerate(chunks):
                batch = pending.result()
                if i + 1 < len(chunks):
                    pending = submit(chunks[i + 1])
                yield batch, labels[chunk[rank::world_size]], len(chunk)
    finally:
        if crop_pool is not None:
            crop_pool.shutdown()


def probe_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
    """Shuffled batches of cached features, ordered by (seed, epoch) like :func:`train_batches`."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(len(features), generator=generator)
    for chunk in global_batches(order, batch_size, world_size)[start_step:]:
        mine = chunk[rank::world_size]
        yield features[mine], labels[mine], len(chunk)


