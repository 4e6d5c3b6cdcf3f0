"""Body features of a run's images (linear probe, head warm-up): sharded over processes, cached on disk."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..data import cache
from ..data.transforms import Preprocessing
from ..inference.forward import body_features, use_bf16
from ..models.model import TransferModel
from . import distributed

__all__ = ["run_features", "feature_key"]


def feature_key(model: str, weights_digest: str, images: str, **crop: Any) -> dict[str, Any]:
    """What cached body features depend on besides what :func:`run_features` adds: the model, its weights'
    digest, the decoded images' key and the crop (``crop="center"``: the eval crop). The fine-tune's head
    warm-up and the ranking build it here, so each reads what the other cached."""
    return {"model": model, "weights": weights_digest, "images": images, **crop}


def run_features(model: TransferModel, crop: Callable[[int], torch.Tensor], n: int, pre: Preprocessing,
                 device: torch.device, dist: distributed.Context, precision: str, quiet: bool,
                 key: dict[str, Any] | None, stats: dict[str, Any] | None = None) -> torch.Tensor:
    """Body features of ``crop(i)`` for every i < n; each process computes its shard.

    With a ``key`` (what the crops depend on, plus the model and its weights' digest) the result
    is read from, or written to, the disk cache of features, keyed also by the preprocessing and
    the numeric precision; None computes without the cache. ``stats`` (``images``, ``seconds``)
    adds what the body really computed: nothing on a cache hit.
    """
    def compute() -> torch.Tensor:
        start = time.perf_counter()
        index = distributed.shard(n, dist)
        if not index:
            local = torch.empty(0, model.head.in_features)
        else:
            local = body_features(model, torch.stack([crop(i) for i in index]), pre, device, quiet=quiet,
                                  precision=precision)
        if stats is not None:
            stats["images"] += len(index)
            stats["seconds"] += time.perf_counter() - start
        return distributed.gather_rows(local, index, n)

    if key is None:
        return compute()
    bf16 = use_bf16(device, precision)
    return cache.features({**key, "preprocessing": pre.to_dict(), "device": device.type, "bf16": bf16,
                           "torch": torch.__version__.split("+")[0], "n": n}, compute)
