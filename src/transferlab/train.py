"""The training engine: data to batches, the loop, evaluation, checkpoints and the run directory.

``finetune(config)`` is the one helper of the recipe: it hides optimizer
construction, parameter groups, metric logging and the pretrained/scratch switch.

A run with ``out`` writes ``checkpoint.pt`` after every epoch (and every
``checkpoint_every`` steps): model, optimizer, scheduler, every random generator,
the epoch and step, and the running sums of the epoch in progress. Data order and
crops are a function of (seed, epoch), so ``resume=True`` continues mid-epoch and,
on CPU, ends with bit-identical weights and metrics. SIGINT/SIGTERM finish the
current step, write a checkpoint and raise :class:`TrainingInterrupted`. Under
torchrun every process trains its share of each global batch (see ``distributed``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import cache, distributed
from .cache import decode
from .config import RunConfig
from .data import Dataset, Split, resolve_data
from .errors import TransferlabError
from .io import atomic_write, atomic_write_json, file_digest
from .models import TransferModel, create_model, folded, load_body, param_groups
from .progress import progress
from .transforms import Crop, Preprocessing, apply_crop, center_crop, normalize, sample_crop
from .weights import ResolvedWeights, load_state_dict, resolve_weights

__all__ = ["RunResult", "Trainer", "finetune", "train_one_epoch", "evaluate", "build_optimizer",
           "build_scheduler", "resolve_device", "save_model", "eval_batch", "train_batches", "prefetch_batches",
           "fit_head", "score", "body_features", "global_batches", "probe_batches", "EpochState", "StopRequest",
           "TrainingInterrupted", "TrainingDiverged", "deterministic_mode", "predict_logits", "use_bf16"]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, int]  # this process's inputs, its labels, the global batch size


@dataclass
class RunResult:
    """What a finished run leaves behind, in memory and in ``run_dir``."""

    run_dir: Path | None
    config: RunConfig
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: TransferModel | None = None

    @property
    def test_acc(self) -> float:
        return float(self.metrics["test_acc"])


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
        return str(self.args[0])


class TrainingDiverged(TransferlabError):
    """A non-finite training loss; every process raises it at the same step."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TransferlabError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransferlabError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


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


# --------------------------------------------------------------------------- batches


def eval_batch(images: Sequence[torch.Tensor], pre: Preprocessing) -> torch.Tensor:
    """Center crops of decoded images, stacked as one uint8 NCHW tensor."""
    return torch.stack([center_crop(img, pre.crop_size) for img in images])


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
                generator: torch.Generator, region: int | None) -> list[Crop]:
    return [sample_crop(images[i], scale, generator, region) for i in index.tolist()]


def _augmented(images: Sequence[torch.Tensor], index: torch.Tensor, rank: int, world_size: int,
               pre: Preprocessing, scale: tuple[float, float], generator: torch.Generator,
               pool: ThreadPoolExecutor | None, region: int | None = None) -> torch.Tensor:
    # The crops of the whole global batch are drawn in order, then this process's share is resized
    # (in parallel where cores allow).
    crops = _draw_crops(images, index, scale, generator, region)
    mine = [(images[i], crop) for i, crop in list(zip(index.tolist(), crops))[rank::world_size]]
    if pool is None:
        return torch.stack([apply_crop(img, crop, pre) for img, crop in mine])
    return torch.stack(list(pool.map(lambda item: apply_crop(item[0], item[1], pre), mine)))


def train_batches(images: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, pre: Preprocessing,
                  scale: tuple[float, float], seed: int, epoch: int, start_step: int = 0, rank: int = 0,
                  world_size: int = 1, prefetch: bool = True, region: int | None = None) -> Iterator[Batch]:
    """Shuffled, augmented uint8 batches (this process's share); crops drawn as :func:`sample_crop` does.

    With ``prefetch`` the next batch is built in a second thread while the model runs
    (see :func:`prefetch_batches`); without it, in this thread when it is asked for.

    The order and crops depend only on (seed, epoch): every process draws the crops of
    the whole global batch and resizes its own share (every ``world_size``-th image from
    ``rank``), and batches before ``start_step`` (done before a resume) have their crops
    drawn but not made, so the random stream goes on exactly as in an uninterrupted epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    chunks = global_batches(order, batch_size, world_size)
    for chunk in chunks[:start_step]:
        _draw_crops(images, chunk, scale, generator, region)
    chunks = chunks[start_step:]
    if not prefetch:
        for chunk in chunks:
            batch = _augmented(images, chunk, rank, world_size, pre, scale, generator, None, region)
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
                                   region)

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
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(features), generator=generator)
    for chunk in global_batches(order, batch_size, world_size)[start_step:]:
        mine = chunk[rank::world_size]
        yield features[mine], labels[mine], len(chunk)


# --------------------------------------------------------------------------- optimisation


def build_optimizer(config: RunConfig, model: TransferModel) -> torch.optim.Optimizer:
    # a linear probe (--freeze body) trains the head alone, at the probe's rate
    lr, mult = (config.probe_lr, 1.0) if config.freeze == "body" else (config.lr, config.head_lr_mult)
    groups = param_groups(model, lr, mult, config.weight_decay, decay_1d=config.decay_1d,
                          pretrained=config.pretrained)
    if not groups:
        raise TransferlabError("--freeze: nothing left to train")
    for group in groups:
        group["initial_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then cosine to zero (or constant)."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _autocast(device: torch.device, precision: str = "auto"):
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


@dataclass
class EpochState:
    """The epoch in progress: steps done and running sums over the global batches (checkpointed)."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0


def train_one_epoch(model: nn.Module, batches: Iterator[Batch], total: int, optimizer: torch.optim.Optimizer,
                    scheduler: Any, loss_fn: nn.Module, pre: Preprocessing | None, device: torch.device,
                    desc: str = "train", quiet: bool = False, reduction: str = "mean", world_size: int = 1,
                    state: EpochState | None = None, stop: Callable[[], bool] | None = None,
                    after_step: Callable[[EpochState, bool], None] | None = None,
                    precision: str = "auto") -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy and images/s over the global batches.

    ``pre`` normalises uint8 images (None: the inputs are cached features). ``loss_fn``
    gives per-sample losses; each process scales its sum so that DDP's gradient average
    is the ``reduction`` ("mean" or "sum") over the global batch. Loss sums, correct
    counts and the ``stop`` flag are summed over processes every step, so all of them
    stop (or diverge) at the same step; ``after_step(state, stopping)`` runs after each.
    """
    state = state or EpochState()
    model.train()
    bar = progress(batches, total=total - state.step, desc=desc, quiet=quiet, unit="batch")
    last = time.perf_counter()
    for inputs, labels, batch_total in bar:
        y = labels.to(device, non_blocking=True)
        if pre is None:
            logits = model(inputs.to(device))
        else:
            with _autocast(device, precision):
                logits = model(normalize(inputs, pre, device))
        losses = loss_fn(logits.float(), y)
        loss = losses.sum() * (world_size / batch_total if reduction == "mean" else world_size)
        loss_sum, correct, seen, stopping = distributed.all_reduce_sum(
            [losses.sum().item(), int((logits.argmax(1) == y).sum()), y.numel(), float(stop() if stop else 0)])
        if not math.isfinite(loss_sum):
            raise TrainingDiverged(f"training diverged: loss is {loss_sum / max(seen, 1)} at {desc} step "
                                   f"{state.step + 1}; lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
        with _autocast(device, precision):
            out.append(fn(normalize(chunk, pre, device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict_logits(model: TransferModel, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                   batch_size: int | None = None, desc: str = "eval", quiet: bool = True,
                   precision: str = "auto") -> torch.Tensor:
    """Logits for a uint8 NCHW tensor of already-cropped images (through a :func:`folded` copy of ``model``)."""
    return _batched(folded(model), images, pre, device, batch_size, desc, quiet, precision)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix (rows: true, columns: predicted)."""
    loss = nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return {"test_loss": loss, "test_acc": float((pred == labels).float().mean()) if len(labels) else 0.0,
            "per_class_acc": per_class, "confusion": confusion.tolist(), "logits": logits}


def evaluate(model: TransferModel, images: torch.Tensor, labels: torch.Tensor, pre: Preprocessing,
             device: torch.device, num_classes: int, batch_size: int | None = None, quiet: bool = True,
             precision: str = "auto") -> dict[str, Any]:
    """:func:`score` of the model's predictions for already-cropped uint8 images."""
    logits = predict_logits(model, images, pre, device, batch_size, quiet=quiet, precision=precision)
    return score(logits, labels, num_classes)


@torch.enable_grad()
def fit_head(model: TransferModel, features: torch.Tensor, labels: torch.Tensor, epochs: int,
             lr: float, weight_decay: float, batch_size: int, label_smoothing: float, seed: int) -> None:
    """Train only the classifier on cached body features (a linear probe)."""
    head = model.head
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(features) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    device = head.weight.device
    for _ in range(epochs):
        for idx in torch.randperm(len(features), generator=generator).split(batch_size):
            loss = loss_fn(head(features[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def body_features(model: TransferModel, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                  batch_size: int | None = None, quiet: bool = True, precision: str = "auto") -> torch.Tensor:
    """Inputs of the classifier layer (pooled body features) for already-cropped uint8 images."""
    return _batched(folded(model).features, images, pre, device, batch_size, "features", quiet, precision)


# --------------------------------------------------------------------------- run directory


def save_model(model: TransferModel, path: Path, classes: Sequence[str], pre: Preprocessing,
               config: RunConfig) -> Path:
    """``model.safetensors``: torchvision state-dict keys; class names and preprocessing in metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    metadata = {"class_names": json.dumps(list(classes)), "model": model.model_name,
                "preprocessing": json.dumps(pre.to_dict()), "head": model.head_name,
                "config": json.dumps(config.to_dict())}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a process may draw from (torch, CUDA, numpy, python), as checkpointable values."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _position(epoch: int, step: int) -> str:
    """Where a checkpoint stands: ``epoch`` whole epochs done, then ``step`` steps of the next."""
    return f"epoch {epoch + 1} step {step}" if step else f"end of epoch {epoch}"


class Trainer:
    """Owns a run: data preparation, the loop, evaluation, checkpoints and files.

    With the whole body frozen (``freeze="body"``, a linear probe) the body runs
    once per image and view, and the head trains on the cached features.

    Under torchrun (``WORLD_SIZE`` > 1) every process trains its share of each global
    batch through DistributedDataParallel, BatchNorm uses global-batch statistics,
    evaluation and feature caching are sharded, and only rank 0 logs and writes files.

    >>> result = Trainer(make_config(data="hotdog", epochs=3)).fit()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, quiet: bool = False, resume: bool = False,
                 dataset: Dataset | None = None) -> None:
        self.config = config.validate()
        self.dist = distributed.context()
        self.quiet = quiet or not self.dist.is_main
        self.resume = resume
        self.run_dir = Path(config.out) if config.out else None
        self.start = time.perf_counter()
        self.elapsed_before = 0.0
        self.device = resolve_device(config.device)
        if self.dist.enabled:
            distributed.check_global_batch(config.batch_size, self.dist.world_size)
            if self.device.type == "cuda":
                if self.dist.local_rank >= torch.cuda.device_count():
                    raise TransferlabError(f"LOCAL_RANK {self.dist.local_rank}: only {torch.cuda.device_count()} "
                                           "GPUs here; start at most that many processes per node")
                self.device = torch.device("cuda", self.dist.local_rank)
        self.dataset = dataset or resolve_data(config.data, config.seed, config.val_fraction)
        self.weights: ResolvedWeights = resolve_weights(config.model, config.weights)
        self.pre = self.weights.preprocessing.with_sizes(config.image_size, config.resize_size)
        self.train_pre = replace(self.pre, crop_size=config.train_image_size or self.pre.crop_size)
        # training crops come from inside the eval crop's square, or from the whole image
        self.crop_region = self.pre.crop_size if config.crop_region == "center" else None
        self.probe = config.freeze == "body"
        self.history: list[dict[str, Any]] = []
        # where training stands; all of it goes into checkpoints
        self.epochs_done = 0
        self.epoch_state = EpochState()
        self.images_seen, self.train_seconds = 0, 0.0
        self.zero_shot: float | None = None
        self.warmup_acc: float | None = None  # test accuracy after the head warm-up
        self.threads = torch.get_num_threads()
        self.last_checkpoint: str | None = None

    def _log(self, msg: str, *args: Any) -> None:
        if self.dist.is_main:
            log.info(msg, *args)

    # -- setup
    def _build_model(self) -> TransferModel:
        torch.manual_seed(self.config.seed)
        state = load_state_dict(self.weights.path) if self.weights.path else None
        model = create_model(self.config.model, len(self.dataset.classes))
        if state is not None:
            try:
                load_body(model, state)
            except TransferlabError as exc:
                raise TransferlabError(f"--weights {self.config.weights}: {exc}") from None
        if self.config.head_init == "imagenet":
            if state is None:
                raise TransferlabError("--head-init imagenet needs pretrained weights, not --weights none")
            from .heads import init_head_from_imagenet

            init_head_from_imagenet(model, state, self.dataset, self.config.head_map, self.weights.categories,
                                    pre=self.pre)
        model.freeze(self.config.freeze)
        model.keep_bn_stats = self.config.bn_stats == "keep" and self.config.pretrained
        if self.dist.enabled and not self.probe:
            model.net = distributed.sync_batchnorm(model.net, self.device)
        return model.to(self.device, memory_format=torch.channels_last)

    def _decode(self, split: Split, desc: str) -> tuple[list[torch.Tensor], torch.Tensor, str]:
        decoded = decode(split.paths, self.pre, skip_bad=self.config.skip_bad_images, desc=desc, quiet=self.quiet)
        labels = torch.tensor([split.labels[i] for i in decoded.kept], dtype=torch.long)
        if len(decoded) == 0:
            raise TransferlabError(f"--data {self.config.data}: no usable images left in the {desc.split()[-1]} "
                                   "split")
        return decoded.images, labels, decoded.key

    def _prepare_data(self) -> None:
        # local rank 0 decodes first and fills the disk cache; the other processes then read it
        with distributed.local_main_first(self.dist):
            self.train_images, self.train_labels, self.train_key = self._decode(self.dataset.train, "decode train")
            test_images, self.test_labels, self.test_key = self._decode(self.dataset.test, "decode test")
        self.test_images = eval_batch(test_images, self.pre)

    def _features(self, model: TransferModel, crop: Callable[[int], torch.Tensor], n: int,
                  key: dict[str, Any]) -> torch.Tensor:
        """Body features of ``crop(i)`` for every i < n; each process computes its shard.

        One process reads and writes the disk cache of features (``feature_cache``) under ``key``
        plus the body's weights and the numeric precision.
        """
        def compute() -> torch.Tensor:
            index = distributed.shard(n, self.dist)
            if not index:
                local = torch.empty(0, model.head.in_features)
            else:
                local = body_features(model, torch.stack([crop(i) for i in index]), self.pre, self.device,
                                      quiet=self.quiet, precision=self.config.precision)
            return distributed.gather_rows(local, index, n)

        if not self.config.feature_cache or self.dist.enabled or self.weights.path is None:
            return compute()
        bf16 = use_bf16(self.device, self.config.precision)
        return cache.features({**key, "model": self.config.model, "weights": self.weights_digest,
                               "preprocessing": self.pre.to_dict(), "device": self.device.type, "bf16": bf16,
                               "torch": torch.__version__.split("+")[0], "n": n}, compute)

    @functools.cached_property
    def weights_digest(self) -> str:
        return file_digest(self.weights.path) if self.weights.path else "none"

    def _eval_crop_features(self, body: TransferModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Body features of the eval crops of the training and of the test images (``body`` folded)."""
        images, center = self.train_images, {"crop": "center"}
        train = self._features(body, lambda i: center_crop(images[i], self.pre.crop_size), len(images),
                               {"images": self.train_key, **center})
        test = self._features(body, lambda i: self.test_images[i], len(self.test_images),
                              {"images": self.test_key, **center})
        return train, test

    def _cache_features(self, model: TransferModel) -> None:
        """Body features of the test crops and of ``probe_views`` views of the training images.

        View 0 is the eval crop; further views are augmented crops, seeded by (seed, view).
        """
        cfg = self.config
        model = folded(model)
        images, n = self.train_images, len(self.train_images)
        center, self.test_features = self._eval_crop_features(model)
        feats = [center]
        for view in range(1, cfg.probe_views):
            generator = torch.Generator().manual_seed(cfg.seed * 7919 + view)
            crops = [sample_crop(img, cfg.crop_scale, generator, self.crop_region) for img in images]
            key = {"images": self.train_key, "crop": "random", "seed": cfg.seed * 7919 + view,
                   "scale": list(cfg.crop_scale), "region": self.crop_region}
            feats.append(self._features(model, lambda i, crops=crops: apply_crop(images[i], crops[i], self.pre), n,
                                        key))
        self.train_features = feats

    def _head_logits(self, model: TransferModel, features: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model.head(features.to(self.device)).float().cpu()

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def _evaluate(self, model: TransferModel) -> dict[str, Any]:
        num_classes = len(self.dataset.classes)
        if self.probe:
            logits = self._head_logits(model, self.test_features)
        elif self.dist.enabled:  # each process predicts its shard of the test images
            index = distributed.shard(len(self.test_images), self.dist)
            local = (predict_logits(model, self.test_images[index], self.pre, self.device, quiet=self.quiet,
                                    precision=self.config.precision) if index else torch.empty(0, num_classes))
            logits = distributed.gather_rows(local, index, len(self.test_images))
        else:
            logits = predict_logits(model, self.test_images, self.pre, self.device, quiet=self.quiet,
                                    precision=self.config.precision)
        return score(logits, self.test_labels, num_classes)

    def _wrap(self, model: TransferModel) -> nn.Module:
        """What the loop trains: the model (or, probing, its head), in DistributedDataParallel on several processes."""
        target = model.head if self.probe else model
        if not self.dist.enabled:
            return target
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(target, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- the run
    def fit(self) -> RunResult:
        joined = False
        try:
            if self.config.deterministic:
                with deterministic_mode(self.threads):
                    joined = distributed.init_process_group(self.dist, self.device)
                    result = self._fit()
            else:
                joined = distributed.init_process_group(self.dist, self.device)
                result = self._fit()
        except (TrainingInterrupted, TrainingDiverged):
            if joined:  # every process stopped at the same step: leave the group cleanly
                distributed.destroy_process_group()
            raise
        if joined:
            distributed.destroy_process_group()
        return result

    def _fit(self) -> RunResult:
        cfg = self.config
        self._log("%s", self.dataset.describe())
        self._log("model %s, weights %s (%s), preprocessing crop %d resize %d %s, train crop %d, device %s%s",
                  cfg.model, self.weights.name, self.weights.source, self.pre.crop_size, self.pre.resize_size,
                  self.pre.interpolation, self.train_pre.crop_size, self.device,
                  f", {self.dist.world_size} processes of {cfg.batch_size // self.dist.world_size} images"
                  if self.dist.enabled else "")
        model = self._build_model()
        self._prepare_data()
        if self.probe:
            self._cache_features(model)
        steps = len(global_batches(torch.arange(len(self.train_labels)), cfg.batch_size, self.dist.world_size))
        if steps == 0:
            raise TransferlabError(f"--data {cfg.data}: {len(self.train_labels)} training images cannot feed "
                                   f"{self.dist.world_size} processes; start fewer")
        optimizer = build_optimizer(cfg, model)
        scheduler = build_scheduler(cfg, optimizer, steps)
        loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=cfg.label_smoothing)
        resumed = False
        if self.run_dir:
            if self.dist.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                cfg.save(self.run_dir / "config.json")
            resumed = self._maybe_resume(model, optimizer, scheduler)
        if not resumed:
            if cfg.head_init == "imagenet":
                self.zero_shot = self._evaluate(model)["test_acc"]
                self._log("zero-shot (head from ImageNet rows, before training): test_acc %.3f", self.zero_shot)
            if not self.probe:
                self._head_warmup(model)
            if self.dist.rank > 0:  # dropout masks differ between processes; rank 0 draws as one process would
                torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        net = self._wrap(model)
        result: dict[str, Any] = {}
        with StopRequest() as stop:
            for epoch in range(self.epochs_done + 1, cfg.epochs + 1):
                stats = self._train_epoch(net, model, optimizer, scheduler, loss_fn, epoch, steps, stop)
                self.images_seen += stats["seen"]
                self.train_seconds += stats["train_s"]
                result = self._evaluate(model)
                row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                       "test_loss": result["test_loss"], "test_acc": result["test_acc"],
                       "wall_s": round(self._elapsed(), 3)}
                self.history.append(row)
                self.epochs_done, self.epoch_state = epoch, EpochState()
                self._log("epoch %d/%d  train_loss %.4f  train_acc %.3f  test_loss %.4f  test_acc %.3f  "
                          "%.1f img/s  %.1f s", epoch, cfg.epochs, row["train_loss"], row["train_acc"],
                          row["test_loss"], row["test_acc"], stats["train_images_per_s"], row["wall_s"])
                if self.run_dir:
                    self._checkpoint(model, optimizer, scheduler, epoch)
                    self._write_history()
                if distributed.all_reduce_sum([stop()])[0] and epoch < cfg.epochs:
                    raise self._interrupted(stop, f"after epoch {epoch}/{cfg.epochs}")
        if not result:  # resumed after the last epoch
            result = self._evaluate(model)
        metrics = {
            "test_acc": result["test_acc"], "test_loss": result["test_loss"],
            "best_test_acc": max([r["test_acc"] for r in self.history] or [result["test_acc"]]),
            "epochs": cfg.epochs, "wall_s": round(self._elapsed(), 3),
            "train_images_per_s": round(self.images_seen / self.train_seconds, 3) if self.train_seconds else None,
            "class_names": list(self.dataset.classes), "per_class_acc": result["per_class_acc"],
            "confusion": result["confusion"], "weights": self.weights.describe(),
            "preprocessing": self.pre.to_dict(), "train_crop_size": self.train_pre.crop_size,
            "device": str(self.device), "train_images": len(self.train_labels),
            "test_images": len(self.test_labels), "probe": self.probe, "processes": self.dist.world_size,
        }
        if self.zero_shot is not None:
            metrics["zero_shot_acc"] = self.zero_shot
        if self.warmup_acc is not None:
            metrics["head_warmup_acc"] = self.warmup_acc
        if self.run_dir and self.dist.is_main:
            save_model(model, self.run_dir / "model.safetensors", self.dataset.classes, self.pre, cfg)
            atomic_write_json(self.run_dir / "metrics.json", metrics)
            (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
        return RunResult(self.run_dir, cfg, self.dataset.classes, metrics, self.history, model)

    def _train_epoch(self, net: nn.Module, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                     loss_fn: nn.Module, epoch: int, steps: int, stop: StopRequest) -> dict[str, float]:
        """One epoch (or the rest of one, after a resume), checkpointing every ``checkpoint_every`` steps."""
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        state = self.epoch_state
        if self.probe:
            features = self.train_features[(epoch - 1) % len(self.train_features)]
            batches = probe_batches(features, self.train_labels, cfg.batch_size, cfg.seed, epoch, state.step,
                                    rank, world)
        else:
            batches = train_batches(self.train_images, self.train_labels, cfg.batch_size, self.train_pre,
                                    cfg.crop_scale, cfg.seed, epoch, state.step, rank, world,
                                    prefetch=prefetch_batches(self.device), region=self.crop_region)

        def after_step(state: EpochState, stopping: bool) -> None:
            done = (epoch - 1) * steps + state.step
            due = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and state.step < steps
            if self.run_dir and (stopping or due):
                self._checkpoint(model, optimizer, scheduler, epoch - 1, step=state.step)
            if stopping:
                raise self._interrupted(stop, f"at epoch {epoch}/{cfg.epochs} step {state.step}/{steps}")

        desc = f"epoch {epoch}/{cfg.epochs}"
        try:
            stats = train_one_epoch(net, batches, steps, optimizer, scheduler, loss_fn,
                                    None if self.probe else self.train_pre, self.device, desc=desc, quiet=self.quiet,
                                    reduction=cfg.loss_reduction, world_size=world, state=state, stop=stop,
                                    after_step=after_step, precision=cfg.precision)
        except TrainingDiverged as exc:
            kept = (f"the last good checkpoint (at {self.last_checkpoint}) is kept in {self.run_dir / 'checkpoint.pt'}"
                    if self.run_dir and self.last_checkpoint else "no checkpoint was written")
            raise TrainingDiverged(f"{exc}; {kept}") from None
        return {**stats, "seen": state.seen}

    def _interrupted(self, stop: StopRequest, where: str) -> TrainingInterrupted:
        signum = stop.signum or signal.SIGTERM  # another process got the signal
        saved = f"checkpoint saved in {self.run_dir}" if self.run_dir else "nothing saved (no --out)"
        return TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} {where}; {saved}", signum,
                                   self.run_dir)

    def _head_warmup(self, model: TransferModel) -> None:
        """Fit the new head on cached body features before the body moves (skipped from scratch)."""
        cfg = self.config
        if cfg.head_warmup_epochs <= 0 or not cfg.pretrained:
            return
        features, test = self._eval_crop_features(folded(model))
        fit_head(model, features, self.train_labels, cfg.head_warmup_epochs, lr=cfg.probe_lr,
                 weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing,
                 seed=cfg.seed)
        # the probe's accuracy: the head on the test images' features
        self.warmup_acc = score(self._head_logits(model, test), self.test_labels,
                                len(self.dataset.classes))["test_acc"]
        self._log("head warm-up (%d epochs on cached features): test_acc %.3f", cfg.head_warmup_epochs,
                  self.warmup_acc)

    # -- files
    def _write_history(self) -> None:
        if not self.dist.is_main:
            return
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))

    def _checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                    epoch: int, step: int = 0) -> None:
        """Save what a resume needs after ``epoch`` whole epochs and ``step`` steps of the next one.

        Every process calls it (their random states are gathered); rank 0 writes. The
        previous checkpoint stays in place until the new one is complete.
        """
        rng = distributed.gather_objects(_rng_state(self.device))
        self.last_checkpoint = _position(epoch, step)
        if not self.dist.is_main:
            return
        state = {"model": model.net.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                 "epoch_state": asdict(self.epoch_state) if step else asdict(EpochState()),
                 "elapsed": self._elapsed(), "history": json.dumps(self.history),
                 "best_test_acc": max([r["test_acc"] for r in self.history], default=None),
                 "zero_shot": self.zero_shot, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                 "world_size": self.dist.world_size, "threads": self.threads, "rng": rng,
                 "torch_rng": rng[0]["torch"]}
        atomic_write(self.run_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp))

    def _maybe_resume(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> bool:
        """Load the latest checkpoint into the model, optimizer, scheduler and this trainer; False if none."""
        path = self.run_dir / "checkpoint.pt"
        if not self.resume:
            return False
        if not path.is_file():
            if (self.run_dir / "metrics.json").is_file():
                raise TransferlabError(f"--resume: {self.run_dir} already finished (metrics.json exists)")
            self._log("--resume: no checkpoint in %s, starting from epoch 1", self.run_dir)
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            epoch, step = int(state["epoch"]), int(state.get("step", 0))
            history = json.loads(state["history"])
            epoch_state = EpochState(**state.get("epoch_state", {}))
            rng = state.get("rng") or [{"torch": state["torch_rng"]}]
        except Exception as exc:  # noqa: BLE001
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # an empty file: EOFError()
            raise TransferlabError(f"{path}: cannot resume from this checkpoint ({reason}); "
                                   "delete it to start over") from None
        if len(rng) == self.dist.world_size or self.dist.rank == 0:
            _set_rng_state(rng[self.dist.rank], self.device)
        else:  # another process count: only the dropout stream of the other ranks differs
            torch.manual_seed(self.config.seed + 1_000_003 * self.dist.rank + epoch)
        if self.config.deterministic and state.get("threads"):
            self.threads = int(state["threads"])
            torch.set_num_threads(self.threads)
        self.history = history
        self.epochs_done, self.epoch_state = epoch, epoch_state
        self.zero_shot = state.get("zero_shot")
        self.images_seen = int(state.get("images_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.elapsed_before = float(state["elapsed"])
        self.start = time.perf_counter()
        self.last_checkpoint = _position(epoch, step)
        self._write_history()  # the history of the checkpoint, not rows written after it
        self._log("resuming %s from the checkpoint at %s", self.run_dir, self.last_checkpoint)
        return True


def finetune(config: RunConfig | None = None, quiet: bool = False, resume: bool = False,
             **overrides: Any) -> RunResult:
    """Fine-tune (or train from scratch with ``weights="none"``) and return the result.

    >>> result = finetune(data="hotdog", model="resnet18", epochs=3, out="runs/r18")  # doctest: +SKIP
    """
    from .config import make_config

    if config is None:
        config = make_config(**overrides)
    elif overrides:
        config = replace(config, **overrides)
    return Trainer(config, quiet=quiet, resume=resume).fit()
