"""What a run is set up with before its first step: one frozen object that the engine's functions take.

The Trainer builds it once; the head warm-up, the checkpoint functions and the final metrics read it,
so each of them can be called (and tested) without a Trainer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig, crop_region_px
from ..data.datasets import Dataset
from ..data.transforms import Preprocessing
from ..files import file_digest
from ..inference.forward import use_bf16
from ..models.weights import ResolvedWeights
from .distributed import Context

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """A run's fixed facts: its config, data, weights, preprocessing, device and place in a torchrun job."""

    config: RunConfig
    dataset: Dataset
    weights: ResolvedWeights
    pre: Preprocessing  # the eval crop (and the resize every image is decoded at)
    train_pre: Preprocessing  # the training crop
    device: torch.device
    dist: Context
    quiet: bool = False
    run_dir: Path | None = None

    @property
    def probe(self) -> bool:
        """The whole body frozen: the head trains on cached features."""
        return self.config.freeze == "body"

    @property
    def eval_split(self) -> str:
        """What every epoch is scored on: the validation split where there is one, else test."""
        return "val" if self.dataset.val is not None else "test"

    @property
    def crop_region(self) -> int | None:
        """Training crops come from inside the eval crop's square (pixels), or from the whole image (None)."""
        return crop_region_px(self.config.crop_region, self.pre.crop_size)

    @property
    def precision_name(self) -> str:
        """The run computes in ``bf16`` (autocast) or ``fp32``, as :func:`~transferlab.inference.use_bf16` says."""
        return "bf16" if use_bf16(self.device, self.config.precision) else "fp32"

    @functools.cached_property
    def weights_digest(self) -> str:
        """The weight file's digest, part of every feature-cache key."""
        return file_digest(self.weights.path) if self.weights.path else "none"
