"""The training loop: one epoch over batches, its checkpointable state, stop requests and determinism.

What one step keeps in memory is measured on two small crops before the first step
(:func:`check_step_memory`): a crop or batch that cannot fit is refused with the numbers.

SIGINT/SIGTERM (:class:`StopRequest`) finish the current step; the caller then writes a
checkpoint and raises :class:`TrainingInterrupted`. A non-finite loss raises
:class:`TrainingDiverged` on every process at the same step.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..console import progress
from ..data.batches import Batch
from ..data.cache import available_memory
from ..data.transforms import Preprocessing, normalize
from ..errors import TransferlabError, opt, render
from ..inference.forward import autocast
from . import distributed

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["EpochState", "StopRequest", "TrainingInterrupted", "TrainingDiverged", "deterministic_mode",
           "Step", "train_one_epoch", "LOSS_CEILING", "check_loss", "optimizer_step", "activation_bytes",
           "check_step_memory"]

log = logging.getLogger("transferlab.train")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after a whole step (and a checkpoint, if the run has a directory)."""

    def __init__(self, message: str, signum: int, run_dir: Path | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return render(str(self.args[0]))  # options named as parameters (the command line always has an --out)


class TrainingDiverged(TransferlabError):
    """A non-finite training loss; every process raises it at the same step."""


@contextmanager
def deterministic_mode(threads: int | None = None) -> Iterator[None]:
    """Deterministic kernels, no cuDNN autotuning and a fixed intra-op thread count; undone on exit.

    Ops without a deterministic CUDA kernel warn rather than fail, so bit-identical
    results are promised on CPU only.
    """
    import torch.utils.deterministic as det

    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, det.fill_uninitialized_memory,
                torch.get_num_threads())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = False  # NaN-filling every new tensor is a debugging aid, and slow
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_num_threads(threads or previous[-1])
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]
        det.fill_uninitialized_memory = previous[4]
        torch.set_num_threads(previous[5])



class StopRequest:
    """While installed (main thread only), SIGINT and SIGTERM ask training to stop after the current step.

    A second signal stops at once (KeyboardInterrupt).
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        log.info("%s: finishing the current step, then saving a checkpoint (send it again to stop now)",
                 signal.Signals(signum).name)

    def __call__(self) -> bool:
        return bool(self.signum)



@dataclass
class EpochState:
    """The epoch in progress: steps done and running sums over the global batches (checkpointed)."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


LOSS_CEILING = 1e4  # a mean cross-entropy above it means the run has diverged (a sane one stays below ~10)


def check_loss(mean_loss: float, where: str, lr_name: str = "lr") -> None:
    """Raise :class:`TrainingDiverged` for a loss that is not finite or beyond :data:`LOSS_CEILING`."""
    if not (math.isfinite(mean_loss) and mean_loss <= LOSS_CEILING):
        raise TrainingDiverged(f"training diverged: loss is {mean_loss:.4g} at {where}; lower {opt(lr_name)} or "
                               "check the data")


def optimizer_step(optimizer: torch.optim.Optimizer, where: str, lr_name: str = "lr") -> None:
    """``optimizer.step()``; an update too large for float32 is a divergence, not a crash."""
    try:
        optimizer.step()
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise TrainingDiverged(f"training diverged: the update overflowed float32 at {where}; lower "
                               f"{opt(lr_name)}") from None


@dataclass(frozen=True)
class Step:
    """How one training step runs: what it optimises, on which inputs, where and in what precision.

    ``pre`` normalises uint8 images (None: the inputs are cached features). ``loss_fn`` gives
    per-sample losses; each process scales its sum so that DDP's gradient average is the
    ``reduction`` ("mean" or "sum") over the global batch of ``world_size`` processes.
    ``lr_name`` is the option an error about the step's learning rate names.
    """

    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    pre: Preprocessing | None
    device: torch.device
    reduction: str = "mean"
    world_size: int = 1
    precision: str = "auto"
    lr_name: str = "lr"


def train_one_epoch(model: nn.Module, batches: Iterator[Batch], total: int, step: Step,
                    state: EpochState | None = None, desc: str = "train", quiet: bool = False,
                    stop: Callable[[], bool] | None = None,
                    after_step: Callable[[EpochState, bool], None] | None = None) -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy and images/s over the global batches.

    Loss sums, correct counts and the ``stop`` flag are summed over processes every step, so all
    of them stop (or diverge) at the same step; ``after_step(state, stopping)`` runs after each.
    """
    optimizer, scheduler, loss_fn, pre, device = step.optimizer, step.scheduler, step.loss_fn, step.pre, step.device
    reduction, world_size, precision, lr_name = step.reduction, step.world_size, step.precision, step.lr_name
    state = state or EpochState()
    model.train()
    bar = progress(batches, total=total - state.step, desc=desc, quiet=quiet, unit="batch")
    last = time.perf_counter()
    for inputs, labels, batch_total in bar:
        y = labels.to(device, non_blocking=True)
        if pre is None:
            logits = model(inputs.to(device))
        else:
            with autocast(device, precision):
                logits = model(normalize(inputs, pre, device))
        losses = loss_fn(logits.float(), y)
        loss = losses.sum() * (world_size / batch_total if reduction == "mean" else world_size)
        loss_sum, correct, seen, stopping = distributed.all_reduce_sum(
            [losses.sum().item(), int((logits.argmax(1) == y).sum()), y.numel(), float(stop() if stop else 0)])
        where = f"{desc} step {state.step + 1}"
        check_loss(loss_sum / max(seen, 1), where, lr_name)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(optimizer, where, lr_name)
        scheduler.step()
        state.step += 1
        state.loss_sum += loss_sum
        state.correct += int(correct)
        state.seen += int(seen)
        state.seconds += time.perf_counter() - last
        if after_step is not None:  # one process reads its own flag now; several agreed on it before the step
            after_step(state, stopping > 0 or (world_size == 1 and stop is not None and stop()))
        last = time.perf_counter()
    return {"train_loss": state.loss_sum / max(1, state.seen), "train_acc": state.correct / max(1, state.seen),
            "train_images_per_s": state.seen / max(state.seconds, 1e-9), "train_s": state.seconds}


# --------------------------------------------------------------------------- the memory of a step

STEP_MEMORY_SHARE = 0.8  # of the memory available, what one step may take
_SIZES = (64, 96)  # two small crops: the part that grows with the pixels, and the part that does not


def _saved_bytes(model: TransferModel, size: int, device: torch.device, precision: str) -> int:
    """Bytes autograd keeps for backward after one forward pass of a ``size`` px image (parameters excluded)."""
    params = {t.untyped_storage().data_ptr() for t in (*model.net.parameters(), *model.net.buffers())}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:  # views of one storage count once
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    image = torch.zeros(1, 3, size, size, device=device).to(memory_format=torch.channels_last)
    training = model.net.training
    model.net.eval()  # eval: BatchNorm's running statistics stay as they are; it saves what training saves
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device, precision):
            model.net(image)
    finally:
        model.net.train(training)
    return sum(saved.values())


def activation_bytes(model: TransferModel, crop: int, batch: int, device: torch.device, precision: str) -> int:
    """What the backward pass of one training step keeps: ``batch`` images of ``crop`` px (at least)."""
    small, large = (_saved_bytes(model, s, device, precision) for s in _SIZES)
    per_pixel = max(large - small, 0) / (_SIZES[1] ** 2 - _SIZES[0] ** 2)
    fixed = max(small - per_pixel * _SIZES[0] ** 2, 0)  # e.g. autocast's copies of the weights
    return int(fixed + batch * per_pixel * crop ** 2)


def _available_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory()


def check_step_memory(model: TransferModel, crop: int, batch: int, device: torch.device, precision: str,
                      crop_option: str) -> None:
    """Refuse, with the numbers, a training step that cannot fit in the memory available (``crop_option``:
    the option that set the crop, named in the advice)."""
    available = _available_memory(device)
    if available is None:
        return
    need = activation_bytes(model, crop, batch, device, precision)
    if need > STEP_MEMORY_SHARE * available:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise TransferlabError(f"{opt(crop_option, crop)}: a training step of {batch} images at {crop} px keeps about "
                               f"{need / 1e9:.1f} GB of activations and {available / 1e9:.1f} GB of {where} are "
                               f"available; lower {opt(crop_option)} or {opt('batch_size')}")
