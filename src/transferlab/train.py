"""The training engine: data to batches, the loop, evaluation, checkpoints and the run directory.

``finetune(config)`` is the one helper of the recipe: it hides optimizer
construction, parameter groups, metric logging and the pretrained/scratch switch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cache import decode
from .config import RunConfig
from .data import Dataset, Split, resolve_data
from .errors import TransferlabError
from .io import atomic_write, atomic_write_json
from .models import TransferModel, create_model, param_groups
from .progress import progress
from .transforms import Preprocessing, apply_crop, augment, center_crop, normalize, sample_crop
from .weights import ResolvedWeights, load_state_dict, resolve_weights

__all__ = ["RunResult", "Trainer", "finetune", "train_one_epoch", "evaluate", "build_optimizer",
           "build_scheduler", "resolve_device", "save_model", "eval_batch", "train_batches", "fit_head", "score",
           "body_features"]

log = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------- batches


def eval_batch(images: Sequence[torch.Tensor], pre: Preprocessing) -> torch.Tensor:
    """Center crops of decoded images, stacked as one uint8 NCHW tensor."""
    return torch.stack([center_crop(img, pre.crop_size) for img in images])


def _augment_workers() -> int:
    """Threads that crop a batch: none beyond the prefetch thread on small machines."""
    return max(1, min(8, (os.cpu_count() or 1) // 4))


def _augmented(images: Sequence[torch.Tensor], index: torch.Tensor, pre: Preprocessing,
               scale: tuple[float, float], generator: torch.Generator,
               pool: ThreadPoolExecutor | None) -> torch.Tensor:
    # Crops are drawn in order from the generator, then resized (in parallel where cores allow).
    crops = [(images[i], sample_crop(images[i], scale, generator)) for i in index.tolist()]
    if pool is None:
        return torch.stack([apply_crop(img, crop, pre) for img, crop in crops])
    return torch.stack(list(pool.map(lambda item: apply_crop(item[0], item[1], pre), crops)))


def train_batches(images: Sequence[torch.Tensor], labels: torch.Tensor, batch_size: int, pre: Preprocessing,
                  scale: tuple[float, float], seed: int, epoch: int,
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented uint8 batches; the next batch is built while the model runs.

    The order and crops depend only on (seed, epoch), so a resumed run sees the same data.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(images), generator=generator)
    chunks = order.split(batch_size)
    workers = _augment_workers()
    crop_pool = ThreadPoolExecutor(workers) if workers > 1 else None
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_augmented, images, chunks[0], pre, scale, generator, crop_pool)
        for i, chunk in enumerate(chunks):
            batch = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(_augmented, images, chunks[i + 1], pre, scale, generator, crop_pool)
            yield batch, labels[chunk]
    if crop_pool is not None:
        crop_pool.shutdown()


# --------------------------------------------------------------------------- optimisation


def build_optimizer(config: RunConfig, model: TransferModel) -> torch.optim.Optimizer:
    groups = param_groups(model, config.lr, config.head_lr_mult, config.weight_decay,
                          decay_1d=config.decay_1d, pretrained=config.pretrained)
    if not groups:
        raise TransferlabError("--freeze: nothing left to train")
    for group in groups:
        group["initial_lr"] = group["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


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


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_one_epoch(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int,
                    optimizer: torch.optim.Optimizer, scheduler: Any, loss_fn: nn.Module,
                    pre: Preprocessing, device: torch.device, desc: str = "train",
                    quiet: bool = False) -> dict[str, float]:
    """One pass over the training batches; returns mean loss, accuracy and images/s."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = progress(batches, total=total, desc=desc, quiet=quiet, unit="batch")
    for images, labels in bar:
        x = normalize(images, pre, device)
        y = labels.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        if not torch.isfinite(loss):
            raise TransferlabError(f"training diverged: loss is {loss.item()} at {desc}; "
                                   "lower --lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n = labels.numel()
        per_sample = loss.item() / n if loss_fn.reduction == "sum" else loss.item()
        loss_sum += per_sample * n
        correct += int((logits.argmax(1) == y).sum())
        seen += n
    seconds = time.perf_counter() - start
    return {"train_loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
            "train_images_per_s": seen / max(seconds, 1e-9), "train_s": seconds}


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                   batch_size: int = 64, desc: str = "eval", quiet: bool = True) -> torch.Tensor:
    """Logits for a uint8 NCHW tensor of already-cropped images."""
    model.eval()
    out = []
    chunks = images.split(batch_size)
    for chunk in progress(chunks, total=len(chunks), desc=desc, quiet=quiet, unit="batch"):
        with _autocast(device):
            out.append(model(normalize(chunk, pre, device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def score(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Loss, accuracy, per-class accuracy and confusion matrix (rows: true, columns: predicted)."""
    loss = nn.functional.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    pred = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return {"test_loss": loss, "test_acc": float((pred == labels).float().mean()) if len(labels) else 0.0,
            "per_class_acc": per_class, "confusion": confusion.tolist(), "logits": logits}


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pre: Preprocessing,
             device: torch.device, num_classes: int, batch_size: int = 64,
             quiet: bool = True) -> dict[str, Any]:
    """:func:`score` of the model's predictions for already-cropped uint8 images."""
    return score(predict_logits(model, images, pre, device, batch_size, quiet=quiet), labels, num_classes)


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


@torch.inference_mode()
def body_features(model: TransferModel, images: torch.Tensor, pre: Preprocessing, device: torch.device,
                  batch_size: int = 64, quiet: bool = True) -> torch.Tensor:
    model.eval()
    out = []
    chunks = images.split(batch_size)
    for chunk in progress(chunks, total=len(chunks), desc="features", quiet=quiet, unit="batch"):
        with _autocast(device):
            out.append(model.features(normalize(chunk, pre, device)).float().cpu())
    return torch.cat(out)


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


class Trainer:
    """Owns a run: data preparation, the loop, evaluation, checkpoints and files.

    With the whole body frozen (``freeze="body"``, a linear probe) the body runs
    once per image and view, and the head trains on the cached features.

    >>> result = Trainer(make_config(data="hotdog", epochs=3)).fit()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, quiet: bool = False, resume: bool = False,
                 dataset: Dataset | None = None) -> None:
        self.config = config.validate()
        self.quiet = quiet
        self.resume = resume
        self.run_dir = Path(config.out) if config.out else None
        self.start = time.perf_counter()
        self.elapsed_before = 0.0
        self.device = resolve_device(config.device)
        self.dataset = dataset or resolve_data(config.data, config.seed, config.val_fraction)
        self.weights: ResolvedWeights = resolve_weights(config.model, config.weights)
        self.pre = self.weights.preprocessing.with_sizes(config.image_size, config.resize_size)
        self.train_pre = replace(self.pre, crop_size=config.train_image_size or self.pre.crop_size)
        self.probe = config.freeze == "body"
        self.history: list[dict[str, Any]] = []

    # -- setup
    def _build_model(self) -> TransferModel:
        torch.manual_seed(self.config.seed)
        state = load_state_dict(self.weights.path) if self.weights.path else None
        model = create_model(self.config.model, len(self.dataset.classes), state)
        if self.config.head_init == "imagenet":
            if state is None:
                raise TransferlabError("--head-init imagenet needs pretrained weights, not --weights none")
            from .heads import init_head_from_imagenet

            init_head_from_imagenet(model, state, self.dataset, self.config.head_map, self.weights.categories)
        model.freeze(self.config.freeze)
        return model.to(self.device, memory_format=torch.channels_last)

    def _decode(self, split: Split, desc: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        decoded = decode(split.paths, self.pre, skip_bad=self.config.skip_bad_images, desc=desc, quiet=self.quiet)
        labels = torch.tensor([split.labels[i] for i in decoded.kept], dtype=torch.long)
        if len(decoded) == 0:
            raise TransferlabError(f"--data {self.config.data}: no usable images left in the {desc.split()[-1]} "
                                   "split")
        return decoded.images, labels

    def _prepare_data(self) -> None:
        self.train_images, self.train_labels = self._decode(self.dataset.train, "decode train")
        test_images, self.test_labels = self._decode(self.dataset.test, "decode test")
        self.test_images = eval_batch(test_images, self.pre)

    def _cache_features(self, model: TransferModel) -> None:
        """Body features of the test crops and of ``probe_views`` views of the training images.

        View 0 is the eval crop; further views are augmented crops, seeded by (seed, view).
        """
        cfg = self.config
        feats = [body_features(model, eval_batch(self.train_images, self.pre), self.pre, self.device,
                               quiet=self.quiet)]
        for view in range(1, cfg.probe_views):
            generator = torch.Generator().manual_seed(cfg.seed * 7919 + view)
            crops = torch.stack([augment(img, self.pre, cfg.crop_scale, generator) for img in self.train_images])
            feats.append(body_features(model, crops, self.pre, self.device, quiet=self.quiet))
        self.train_features = feats
        self.test_features = body_features(model, self.test_images, self.pre, self.device, quiet=self.quiet)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def _evaluate(self, model: TransferModel) -> dict[str, Any]:
        if self.probe:
            with torch.inference_mode():
                logits = model.head(self.test_features.to(self.device)).float().cpu()
            return score(logits, self.test_labels, len(self.dataset.classes))
        return evaluate(model, self.test_images, self.test_labels, self.pre, self.device,
                        len(self.dataset.classes), quiet=self.quiet)

    # -- the run
    def fit(self) -> RunResult:
        cfg = self.config
        log.info("%s", self.dataset.describe())
        log.info("model %s, weights %s (%s), preprocessing crop %d resize %d %s, train crop %d, device %s",
                 cfg.model, self.weights.name, self.weights.source, self.pre.crop_size, self.pre.resize_size,
                 self.pre.interpolation, self.train_pre.crop_size, self.device)
        model = self._build_model()
        self._prepare_data()
        if self.probe:
            self._cache_features(model)
        steps = math.ceil(len(self.train_labels) / cfg.batch_size)
        optimizer = build_optimizer(cfg, model)
        scheduler = build_scheduler(cfg, optimizer, steps)
        loss_fn = nn.CrossEntropyLoss(reduction=cfg.loss_reduction, label_smoothing=cfg.label_smoothing)
        first_epoch = 1
        if self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run_dir / "config.json")
            first_epoch = self._maybe_resume(model, optimizer, scheduler)
        zero_shot = None
        if first_epoch == 1:
            if cfg.head_init == "imagenet":
                zero_shot = self._evaluate(model)["test_acc"]
                log.info("zero-shot (head from ImageNet rows, before training): test_acc %.3f", zero_shot)
            if not self.probe:
                self._head_warmup(model)
        images_seen, train_seconds = 0, 0.0
        result: dict[str, Any] = {}
        for epoch in range(first_epoch, cfg.epochs + 1):
            desc = f"epoch {epoch}/{cfg.epochs}"
            if self.probe:
                stats = self._probe_epoch(model, optimizer, scheduler, loss_fn, epoch)
            else:
                batches = train_batches(self.train_images, self.train_labels, cfg.batch_size, self.train_pre,
                                        cfg.crop_scale, cfg.seed, epoch)
                stats = train_one_epoch(model, batches, steps, optimizer, scheduler, loss_fn, self.train_pre,
                                        self.device, desc=desc, quiet=self.quiet)
            images_seen += len(self.train_labels)
            train_seconds += stats.pop("train_s")
            result = self._evaluate(model)
            row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                   "test_loss": result["test_loss"], "test_acc": result["test_acc"],
                   "wall_s": round(self._elapsed(), 3)}
            self.history.append(row)
            log.info("epoch %d/%d  train_loss %.4f  train_acc %.3f  test_loss %.4f  test_acc %.3f  "
                     "%.1f img/s  %.1f s", epoch, cfg.epochs, row["train_loss"], row["train_acc"],
                     row["test_loss"], row["test_acc"], stats["train_images_per_s"], row["wall_s"])
            if self.run_dir:
                self._write_history()
                self._checkpoint(model, optimizer, scheduler, epoch)
        if not result:  # resumed after the last epoch
            result = self._evaluate(model)
        metrics = {
            "test_acc": result["test_acc"], "test_loss": result["test_loss"],
            "best_test_acc": max([r["test_acc"] for r in self.history] or [result["test_acc"]]),
            "epochs": cfg.epochs, "wall_s": round(self._elapsed(), 3),
            "train_images_per_s": round(images_seen / train_seconds, 3) if train_seconds else None,
            "class_names": list(self.dataset.classes), "per_class_acc": result["per_class_acc"],
            "confusion": result["confusion"], "weights": self.weights.describe(),
            "preprocessing": self.pre.to_dict(), "train_crop_size": self.train_pre.crop_size,
            "device": str(self.device), "train_images": len(self.train_labels),
            "test_images": len(self.test_labels), "probe": self.probe,
        }
        if zero_shot is not None:
            metrics["zero_shot_acc"] = zero_shot
        if self.run_dir:
            save_model(model, self.run_dir / "model.safetensors", self.dataset.classes, self.pre, cfg)
            atomic_write_json(self.run_dir / "metrics.json", metrics)
            (self.run_dir / "checkpoint.pt").unlink(missing_ok=True)
        return RunResult(self.run_dir, cfg, self.dataset.classes, metrics, self.history, model)

    def _probe_epoch(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                     loss_fn: nn.Module, epoch: int) -> dict[str, float]:
        """One epoch of the head on cached features (view ``epoch - 1`` modulo the views)."""
        features = self.train_features[(epoch - 1) % len(self.train_features)]
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(len(features), generator=generator).split(self.config.batch_size)
        head = model.head
        loss_sum, correct, start = 0.0, 0, time.perf_counter()
        for idx in order:
            x, y = features[idx].to(self.device), self.train_labels[idx].to(self.device)
            logits = head(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * (1 if loss_fn.reduction == "sum" else len(idx))
            correct += int((logits.argmax(1) == y).sum())
        seconds = time.perf_counter() - start
        n = len(features)
        return {"train_loss": loss_sum / n, "train_acc": correct / n, "train_images_per_s": n / max(seconds, 1e-9),
                "train_s": seconds}

    def _head_warmup(self, model: TransferModel) -> None:
        """Fit the new head on cached body features before the body moves (skipped from scratch)."""
        cfg = self.config
        if cfg.head_warmup_epochs <= 0 or not cfg.pretrained:
            return
        features = body_features(model, eval_batch(self.train_images, self.pre), self.pre, self.device,
                                 quiet=self.quiet)
        fit_head(model, features, self.train_labels, cfg.head_warmup_epochs, lr=cfg.lr * cfg.head_lr_mult * 10,
                 weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, label_smoothing=cfg.label_smoothing,
                 seed=cfg.seed)
        log.info("head warm-up (%d epochs on cached features): test_acc %.3f", cfg.head_warmup_epochs,
                 self._evaluate(model)["test_acc"])

    # -- files
    def _write_history(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        atomic_write(self.run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(lines))

    def _checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                    epoch: int) -> None:
        state = {"model": model.net.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "elapsed": self._elapsed(),
                 "torch_rng": torch.get_rng_state(), "history": json.dumps(self.history)}
        atomic_write(self.run_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp))

    def _maybe_resume(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        path = self.run_dir / "checkpoint.pt"
        if not self.resume:
            return 1
        if not path.is_file():
            if (self.run_dir / "metrics.json").is_file():
                raise TransferlabError(f"--resume: {self.run_dir} already finished (metrics.json exists)")
            log.info("--resume: no checkpoint in %s, starting from epoch 1", self.run_dir)
            return 1
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except Exception as exc:  # noqa: BLE001
            raise TransferlabError(f"{path}: cannot resume from this checkpoint ({str(exc).splitlines()[0]}); "
                                   "delete it to start over") from None
        torch.set_rng_state(state["torch_rng"])
        self.history = json.loads(state["history"])
        self.elapsed_before = float(state["elapsed"])
        self.start = time.perf_counter()
        log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])
        return int(state["epoch"]) + 1


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
