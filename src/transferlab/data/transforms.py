"""Preprocessing derived from the weights' own metadata, applied to uint8 tensors.

Images are decoded once and resized so that their shorter side is
``resize_size`` (the eval Resize). From there:

- eval  = CenterCrop(crop_size) + normalize  (torchvision's Resize + CenterCrop);
- train = RandomResizedCrop(crop_size, scale) + flips (horizontal by default) + normalize.

Crops and flips run on uint8 tensors; normalisation is fused at the end of a batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..config import FLIPS
from .images import ImageSource, load_rgb, to_tensor

__all__ = ["Preprocessing", "decode_one", "resize_shorter", "center_crop", "random_resized_crop_box", "sample_crop",
           "apply_crop", "augment", "normalize"]


@dataclass(frozen=True)
class Preprocessing:
    """What the pretrained weights expect: sizes, interpolation and channel statistics."""

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_weights(cls, weights: Any) -> Preprocessing:
        """Read torchvision ``Weights.transforms()`` (an ``ImageClassification`` preset)."""
        preset = weights.transforms()
        return cls(
            crop_size=int(preset.crop_size[0]),
            resize_size=int(preset.resize_size[0]),
            mean=tuple(float(v) for v in preset.mean),
            std=tuple(float(v) for v in preset.std),
            interpolation=InterpolationMode(preset.interpolation).value,
        )

    def with_sizes(self, crop_size: int | None, resize_size: int | None) -> Preprocessing:
        """Override sizes explicitly; a new crop keeps the weights' crop/resize ratio."""
        if crop_size is None and resize_size is None:
            return self
        crop = crop_size or self.crop_size
        resize = resize_size or max(crop, round(crop * self.resize_size / self.crop_size))
        return replace(self, crop_size=crop, resize_size=resize)

    @property
    def mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        return cls(crop_size=int(values["crop_size"]), resize_size=int(values["resize_size"]),
                   mean=tuple(values["mean"]), std=tuple(values["std"]),
                   interpolation=values.get("interpolation", "bilinear"))


def resize_shorter(image: torch.Tensor, size: int, mode: InterpolationMode) -> torch.Tensor:
    """Resize a uint8 CHW image so that its shorter side is ``size`` (torchvision ``Resize(size)``)."""
    return F.resize(image, [size], interpolation=mode, antialias=True)


def decode_one(source: ImageSource, pre: Preprocessing) -> torch.Tensor:
    """Decode a file, bytes or PIL image as RGB (:func:`~transferlab.data.images.load_rgb`), shorter side to
    ``pre.resize_size``, as a uint8 CHW tensor."""
    return resize_shorter(to_tensor(load_rgb(source)), pre.resize_size, pre.mode)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.center_crop(image, [size, size])


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float],
                            generator: torch.Generator,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Sample (top, left, h, w) as torchvision's RandomResizedCrop does, from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Fallback: the largest central crop within the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


Crop = tuple[int, int, int, int, int]  # top, left, height, width, flips (bits: 1 horizontal, 2 vertical, 4 transpose)


def sample_crop(image: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                region: int | None = None, flips: str = "h") -> Crop:
    """Draw one RandomResizedCrop box and the flip coins of ``flips`` (see :data:`FLIPS`) for ``image``.

    ``region``: draw the box inside the central ``region`` x ``region`` square, the one
    :func:`center_crop` takes at evaluation (None: anywhere in the whole image).
    """
    height, width = image.shape[-2:]
    top0 = left0 = 0
    if region is not None:
        # the offsets torchvision's center_crop uses
        top0, left0 = round((height - min(region, height)) / 2), round((width - min(region, width)) / 2)
        height, width = min(region, height), min(region, width)
    top, left, h, w = random_resized_crop_box(height, width, scale, generator)
    code = 0
    # FLIPS.index(flips) coins: horizontal, vertical, transpose; "h" draws exactly as it always has
    for bit in range(FLIPS.index(flips)):
        code |= (torch.rand(1, generator=generator).item() < 0.5) << bit
    return top0 + top, left0 + left, h, w, code


def apply_crop(image: torch.Tensor, crop: Crop, pre: Preprocessing) -> torch.Tensor:
    top, left, h, w, code = crop
    out = F.resized_crop(image, top, left, h, w, [pre.crop_size, pre.crop_size],
                         interpolation=pre.mode, antialias=True)
    if code & 1:
        out = out.flip(-1)
    if code & 2:
        out = out.flip(-2)
    if code & 4:
        out = out.transpose(-1, -2)
    return out


def augment(image: torch.Tensor, pre: Preprocessing, scale: tuple[float, float],
            generator: torch.Generator, region: int | None = None, flips: str = "h") -> torch.Tensor:
    """RandomResizedCrop + flips of one uint8 CHW image (see :func:`sample_crop`)."""
    return apply_crop(image, sample_crop(image, scale, generator, region, flips), pre)


def normalize(batch: torch.Tensor, pre: Preprocessing, device: torch.device | str = "cpu",
              channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW batch -> float32 normalised batch on ``device`` (channels-last by default)."""
    batch = batch.to(device, non_blocking=True)
    mean = torch.tensor(pre.mean, device=batch.device).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=batch.device).view(1, -1, 1, 1) * 255.0
    out = (batch.float() - mean) / std
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
