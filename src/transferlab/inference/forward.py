"""Inference policy and batched forward passes: device, precision, evaluation crops, logits, features, scores.

The read-only side (``inference``, ``export``, ``serve``, ``reports``, ``heads``) and the
training engine both use this module; it knows nothing of training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..console import progress
from ..data.transforms import Preprocessing, center_crop, normalize
from ..errors import TransferlabError, opt
from ..models.model import TransferModel, folded

__all__ = ["CPU_INFERENCE_BATCH", "resolve_device", "cpu_has_amx", "use_bf16", "autocast", "eval_batch",
           "predict_logits", "body_features", "evaluate", "folded"]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``: the devices runs are made for."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise TransferlabError(f"{opt('device', name)}: not a device transferlab runs on; use auto, cpu, cuda or "
                               "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransferlabError(f"{opt('device', name)}: CUDA is not available on this machine; use "
                               f"{opt('device', 'cpu')}")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TransferlabError(f"{opt('device', name)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles, whose bf16 matrix units make bf16 autocast pay (README, "Speed")."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether to run under bf16 autocast (see ``RunConfig.precision``)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_amx())


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """bf16 autocast where :func:`use_bf16` says so, a no-op context elsewhere."""
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


def eval_batch(images: Sequence[torch.Tensor], pre: Preprocessing) -> torch.Tensor:
    """Center crops of decoded images, stacked as one uint8 NCHW tensor."""
    return torch.stack([center_crop(img, pre.crop_size) for img in images])




# Forward-only batches on CPU: small ones keep the activations in cache and measured about 2x
# the images/s of batches of 64 (`python bench/inference.py --batch-sizes 8 64`, README "Speed").
CPU_INFERENCE_BATCH = 8


@torch.inference_mode()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, pre: Preprocessing,
             device: torch.device, batch_size: int | None, desc: str, quiet: bool, precision: str) -> torch.Tensor:
    """``fn`` over a uint8 NCHW tensor of already-cropped images, in normalised batches, on the CPU after.

    ``batch_size`` None: :data:`CPU_INFERENCE_BATCH` on CPU, 256 on an accelerator.
    """
    out = []
    chunks = images.split(batch_size or (CPU_INFERENCE_BATCH if device.type == "cpu" else 256))
    for chunk in progress(chunks, total=len(chunks), desc=desc, quiet=quiet, unit="batch"):
        with autocast(device, precision):
            out.append(fn(normalize(chunk, pre, device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict_logits(model: TransferModel, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                   batch_size: int | None = None, desc: str = "eval", quiet: bool = True,
                   precision: str = "auto") -> torch.Tensor:
    """Logits for a uint8 NCHW tensor of already-cropped images (through a :func:`folded` copy of ``model``)."""
    return _batched(folded(model), images, pre, device, batch_size, desc, quiet, precision)


def evaluate(model: TransferModel, images: torch.Tensor, labels: torch.Tensor, pre: Preprocessing,
             device: torch.device, classes: Sequence[str], batch_size: int | None = None, quiet: bool = True,
             precision: str = "auto", split: str = "test") -> dict[str, Any]:
    """Every metric (:func:`~transferlab.evaluation.metric_block`, the one schema of ``metrics.json`` and
    ``evaluate``) of the model's predictions for already-cropped uint8 images."""
    from ..evaluation.metrics import metric_block

    logits = predict_logits(model, images, pre, device, batch_size, quiet=quiet, precision=precision)
    return metric_block(logits, labels, classes, split)


def body_features(model: TransferModel, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                  batch_size: int | None = None, quiet: bool = True, precision: str = "auto") -> torch.Tensor:
    """Inputs of the classifier layer (pooled body features) for already-cropped uint8 images."""
    return _batched(folded(model).features, images, pre, device, batch_size, "features", quiet, precision)


