"""The run configuration: one frozen object, resolved once and saved with every run."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TransferlabError, first_line, opt

__all__ = ["RunConfig", "PRESETS", "PRECISIONS", "FLIPS", "make_config", "upgrade", "crop_region_px", "FOLDS",
           "TIME_LIMIT_EPOCHS", "AUTO", "parse_duration", "defaults"]

LR_CEILING = 1.0  # learning rates above it are refused unless forced (docs/bad-input.md)
WEIGHT_DECAY_CEILING = 1.0  # likewise the weight decay (AdamW's is 0.01-0.1, SGD's 1e-4-1e-3)
HEAD_LR_MULT_CEILING = 1000.0  # and the head's rate over the body's (the recipe's is 10; the study tries 1 and 100)
MAX_IMAGE_SIZE = 2048  # the largest crop or resize, in pixels
PRECISIONS = ("auto", "fp32", "bf16")  # see RunConfig.precision
BN_STATS = ("keep", "update")  # see RunConfig.bn_stats
CROP_REGIONS = ("center", "full")  # see RunConfig.crop_region
NAMED_DATA = ("elpv", "hotdog")  # what --data takes besides a folder (transferlab.data.datasets resolves them)
AUTO = "auto"  # --model auto: rank the offline backbones first, then fine-tune the pick (workflows.finetuning)
# The largest counts a run may ask for (a larger one only overflows or never ends).
COUNT_CEILINGS = {"epochs": 100_000, "head_warmup_epochs": 100_000, "batch_size": 1 << 20, "probe_views": 1_000,
                  "checkpoint_every": 1 << 40, "early_stopping": 100_000, "warmup_epochs": 100_000}
FOLDS = 5  # probe cross-validation folds, ranking and --head-fit alike (fewer when a class has fewer images)
FLIPS = ("none", "h", "hv", "d4")  # see RunConfig.flips; each adds one flip coin to the one before
SELECT_METRICS = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc")  # see RunConfig.select_metric
CLASS_WEIGHTS = ("none", "balanced")  # see RunConfig.class_weights
HEAD_FITS = ("adamw", "logreg")  # see RunConfig.head_fit
MAX_TIME_LIMIT = 7 * 24 * 3600.0  # a week, in seconds: the longest --time-limit
TIME_LIMIT_EPOCHS = 10  # the most epochs a time-limited run plans when it names no --epochs
DEFAULT_VAL_FRACTION = 0.15  # carved from train when a run selects but names no fraction (README, "Validation")


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run does.

    ``None`` means "take it from the weights' metadata" (image and resize size).
    The body learning rate is ``lr``; the new head gets ``lr * head_lr_mult``.
    A run from scratch (``weights="none"``) has no pretrained body, so every
    layer is new and every layer gets the head rate.

    A pretrained run first fits the new head alone for ``head_warmup_epochs`` on cached
    body features (a linear probe, at ``probe_lr``, the rate of ``freeze="body"`` runs
    too), then fine-tunes everything. ``head_fit="logreg"`` fits that head (and a probe's) as a
    logistic regression instead, its L2 strength chosen by cross-validation on the training split.
    ``bn_stats="keep"`` makes BatchNorm normalise with the pretrained statistics while
    training (scale and shift still train), so the body sees the same features the head
    was fitted on; ``crop_region="center"`` draws the training crops inside the square
    the eval crop takes. Both matter on data unlike ImageNet (README, "Defaults").
    ``flips`` are the symmetries of a training crop: ``h`` a horizontal flip (natural photos
    have an up), ``hv`` a vertical one too, ``d4`` all eight rotations and reflections
    (images seen from above or without an up: solar cells, slides, satellite tiles).

    ``time_limit`` (seconds) plans the run against the clock (:mod:`transferlab.train.budget`): the
    epochs that fit after the head warm-up, re-planned after each one; it carves a validation split
    and keeps the stage best on it (the warm-up counts as one).

    ``precision``: ``auto`` trains and predicts under bf16 autocast on CUDA and on CPUs
    with AMX (where it measured faster), in fp32 elsewhere; ``fp32`` and ``bf16`` force one.
    Saved models predict in fp32 unless asked (:class:`~transferlab.inference.predictor.Predictor`).
    ``feature_cache`` keeps a linear probe's body features on disk, so a later probe of
    the same images, weights and crops skips the body entirely.

    The data has three roles: ``train``; ``validation``, for every choice a run makes (the
    epoch kept, early stopping, calibration); ``test``, scored once on the final model.
    ``test_fraction`` sizes the test split of a bare class-folder tree; ``val_fraction`` the
    validation split carved from train (0: none, unless selection asks for one, see
    :attr:`carve_fraction`). ``select_metric`` keeps the epoch best on validation,
    ``early_stopping`` stops after that many epochs without improvement.
    ``class_weights="balanced"`` weights the loss by inverse class frequency.
    ``calibrate`` fits a temperature on validation; the saved model predicts with it.
    """

    data: str = "hotdog"
    model: str = AUTO
    weights: str = "imagenet"
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-5
    head_lr_mult: float = 10.0
    freeze: str = "none"
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    decay_1d: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    loss_reduction: str = "mean"
    label_smoothing: float = 0.1
    head_warmup_epochs: int = 10
    probe_lr: float = 1e-2
    head_fit: str = "adamw"
    head_init: str = "xavier"
    head_map: dict[str, list[str | int]] | None = None
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_region: str = "center"
    flips: str = "h"
    bn_stats: str = "keep"
    image_size: int | None = None
    resize_size: int | None = None
    train_image_size: int | None = None
    probe_views: int = 1
    feature_cache: bool = True
    skip_bad_images: bool = False
    checkpoint_every: int = 0
    deterministic: bool = False
    precision: str = "auto"
    test_fraction: float = 0.25
    val_fraction: float = 0.0
    select_metric: str | None = None
    early_stopping: int = 0
    time_limit: float | None = None
    class_weights: str = "none"
    calibrate: bool = False
    seed: int = 0
    device: str = "auto"
    preset: str | None = None
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.time_limit, str):  # "5m" from Python or a notebook, as on the command line
            object.__setattr__(self, "time_limit", parse_duration(self.time_limit))

    def __repr__(self) -> str:
        """The options that differ from the defaults (``to_dict()`` has them all)."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != _default(f)]
        return f"RunConfig({', '.join(changed)})"

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def selection(self) -> str | None:
        """The metric that picks the stage kept: ``select_metric``, else loss under early stopping or a clock (a time
        limit, or ``model="auto"``, which plans against one), else none."""
        return self.select_metric or ("loss" if self.early_stopping or self.time_limit or self.model == AUTO else None)

    @property
    def carve_fraction(self) -> float:
        """The share of train carved off as validation when the data has no ``val/`` of its own."""
        if self.val_fraction:
            return self.val_fraction
        return DEFAULT_VAL_FRACTION if (self.selection or self.calibrate) else 0.0

    def validate(self, force: bool = False) -> RunConfig:
        """Raise a one-line :class:`TransferlabError` for values no run can use.

        Numbers must be finite numbers of the field's type; ``force`` accepts learning rates
        above :data:`LR_CEILING`.
        """
        self._check_types()
        if not 0 <= self.seed < 2**32:
            raise TransferlabError(f"{opt('seed', self.seed)}: must be between 0 and 2**32 - 1")
        for name in ("lr", "probe_lr"):
            value = getattr(self, name)
            if value > LR_CEILING and not force:
                raise TransferlabError(f"{opt(name, value)}: above {LR_CEILING:g}, where no run of this tool trains; "
                                       f"lower it, or pass {opt('force')} to try anyway")
        if self.image_size and self.resize_size and self.resize_size < self.image_size:
            raise TransferlabError(f"{opt('resize_size', self.resize_size)}: smaller than "
                                   f"{opt('image_size', self.image_size)}; the crop would be padded with black")
        for name in ("image_size", "resize_size", "train_image_size"):
            value = getattr(self, name)
            if value is not None and value > MAX_IMAGE_SIZE:
                raise TransferlabError(f"{opt(name, value)}: over {MAX_IMAGE_SIZE} pixels; every image would be "
                                       "decoded at least that large")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "head_lr_mult": self.head_lr_mult, "probe_lr": self.probe_lr}
        for name, value in positive.items():
            if not value > 0:
                raise TransferlabError(f"{opt(name)} must be positive, got {value}")
        choices = {"optimizer": (self.optimizer, ("sgd", "adamw")),
                   "schedule": (self.schedule, ("cosine", "constant")),
                   "loss_reduction": (self.loss_reduction, ("mean", "sum")),
                   "precision": (self.precision, PRECISIONS), "bn_stats": (self.bn_stats, BN_STATS),
                   "crop_region": (self.crop_region, CROP_REGIONS), "flips": (self.flips, FLIPS),
                   "head_init": (self.head_init, ("xavier", "imagenet")),
                   "class_weights": (self.class_weights, CLASS_WEIGHTS), "head_fit": (self.head_fit, HEAD_FITS)}
        if self.select_metric is not None:
            choices["select_metric"] = (self.select_metric, SELECT_METRICS)
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise TransferlabError(f"{opt(name)} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                                       f"got {value!r}")
        if self.head_map is not None and self.head_init != "imagenet":
            raise TransferlabError(f"{opt('head_map')} maps ImageNet rows to classes: it needs "
                                   f"{opt('head_init', 'imagenet')}")
        if self.head_init == "imagenet" and not self.pretrained:
            raise TransferlabError(f"{opt('head_init', 'imagenet')} needs pretrained weights, not "
                                   f"{opt('weights', 'none')}")
        for name, ceiling in COUNT_CEILINGS.items():  # a count no run reaches overflows long before it ends
            value = getattr(self, name)
            if value > ceiling:
                raise TransferlabError(f"{opt(name, value)}: over {ceiling:,}, more than any run can use; lower it")
        if self.warmup_epochs < 0:
            raise TransferlabError(f"{opt('warmup_epochs')} must not be negative, got {self.warmup_epochs}")
        if self.head_lr_mult > HEAD_LR_MULT_CEILING and not force:
            raise TransferlabError(f"{opt('head_lr_mult', self.head_lr_mult)}: above {HEAD_LR_MULT_CEILING:g}, where "
                                   f"the head's steps swamp the body's; lower it, or pass {opt('force')} to try anyway")
        if self.weight_decay > WEIGHT_DECAY_CEILING and not force:
            raise TransferlabError(f"{opt('weight_decay', self.weight_decay)}: above {WEIGHT_DECAY_CEILING:g}, which "
                                   f"shrinks every weight to nothing; lower it, or pass {opt('force')} to try anyway")
        if not self.momentum < 1:
            raise TransferlabError(f"{opt('momentum', self.momentum)}: must be below 1 (at 1 or above, SGD's steps "
                                   "grow without bound)")
        if self.weight_decay < 0 or self.momentum < 0 or self.head_warmup_epochs < 0:
            raise TransferlabError(f"{opt('weight_decay')}, {opt('momentum')} and {opt('head_warmup_epochs')} must not "
                                   "be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TransferlabError(f"{opt('label_smoothing')} must be in [0, 1), got {self.label_smoothing}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise TransferlabError(f"{opt('crop_scale')} must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 < self.test_fraction < 1.0:
            raise TransferlabError(f"{opt('test_fraction')} must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise TransferlabError(f"{opt('val_fraction')} must be in [0, 1) (0: no validation split), "
                                   f"got {self.val_fraction}")
        if self.early_stopping < 0:
            raise TransferlabError(f"{opt('early_stopping')} must be 0 (off) or a number of epochs, "
                                   f"got {self.early_stopping}")
        if self.checkpoint_every < 0:
            raise TransferlabError(f"{opt('checkpoint_every')} must be 0 (epochs only) or a number of steps, "
                                   f"got {self.checkpoint_every}")
        if self.time_limit is not None and not 1.0 <= self.time_limit <= MAX_TIME_LIMIT:
            raise TransferlabError(f"{opt('time_limit', self.time_limit)}: must be between 1 second and a week "
                                   "(e.g. 300, 5m, 1h)")
        if self.probe_views < 1:
            raise TransferlabError(f"{opt('probe_views')} must be at least 1, got {self.probe_views}")
        for name, value in (("image_size", self.image_size), ("resize_size", self.resize_size),
                            ("train_image_size", self.train_image_size)):
            if value is not None and value < 16:
                raise TransferlabError(f"{opt(name)} must be at least 16 pixels, got {value}")
        return self

    def _check_types(self) -> None:
        """Every field holds a value of its declared kind (a config file may say ``"epochs": "3"``)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _KINDS.get(f.name)
            if kind is None or (value is None and f.default is None):
                continue
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            if not ok:
                what = {float: "a finite number", int: "a whole number", bool: "true or false", str: "text"}[kind]
                raise TransferlabError(f"{opt(f.name)} must be {what}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["crop_scale"] = list(self.crop_scale)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TransferlabError(
                f"{source}: unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        values = dict(values)
        if "crop_scale" in values:
            try:
                scale = tuple(float(v) for v in values["crop_scale"])
                if len(scale) != 2:
                    raise ValueError
                values["crop_scale"] = scale
            except (TypeError, ValueError):
                raise TransferlabError(f"{source}: {opt('crop_scale')} must be two numbers, got "
                                       f"{values['crop_scale']!r}") from None
        return cls(**values)

    def to_json(self) -> str:
        """The config as ``config.json`` holds it, ``train --print-config`` shows it and ``--config`` reads it."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        from .files import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise TransferlabError(f"{path}: cannot read run config ({first_line(exc, 200)})") from None
        return cls.from_dict(upgrade(values) if isinstance(values, dict) else values, source=str(path))


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config in today's names: one written before the split roles had names sized its test split
    with ``val_fraction``."""
    if "test_fraction" not in values and "val_fraction" in values:
        values = dict(values)
        values["test_fraction"] = values.pop("val_fraction")
    return values


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# The kind of value of each scalar field (checked by RunConfig.validate).
_KINDS: dict[str, type] = {
    **{name: float for name in ("lr", "head_lr_mult", "momentum", "weight_decay", "warmup_epochs", "label_smoothing",
                                "probe_lr", "val_fraction", "test_fraction", "time_limit")},
    **{name: int for name in ("epochs", "batch_size", "head_warmup_epochs", "image_size", "resize_size",
                              "train_image_size", "probe_views", "checkpoint_every", "seed",
                              "early_stopping")},
    **{name: bool for name in ("decay_1d", "feature_cache", "skip_bad_images", "deterministic", "calibrate")},
    **{name: str for name in ("data", "model", "weights", "freeze", "optimizer", "schedule", "loss_reduction",
                              "head_init", "crop_region", "flips", "bn_stats", "precision", "device", "select_metric",
                              "class_weights", "head_fit")},
}

# Presets are plain overrides of the defaults; explicit options win over them.
PRESETS: dict[str, dict[str, Any]] = {
    # Our defaults, spelled out so `--preset default` is explicit in saved configs.
    "default": {},
    # The seed recipe exactly: plain SGD on a *summed* loss, wd 1e-3 on every parameter.
    # Mean-loss equivalent: multiply both learning rates by the batch size (128)
    # and divide the weight decay by it.
    "d2l": {
        "epochs": 5, "batch_size": 128, "lr": 5e-5, "head_lr_mult": 10.0,
        "optimizer": "sgd", "momentum": 0.0, "weight_decay": 1e-3, "decay_1d": True,
        "schedule": "constant", "warmup_epochs": 0.0, "loss_reduction": "sum",
        "label_smoothing": 0.0, "head_warmup_epochs": 0, "crop_scale": (0.08, 1.0), "crop_region": "full",
        "bn_stats": "update", "probe_lr": 5e-4,
    },
}


def crop_region_px(crop_region: str, crop_size: int) -> int | None:
    """The side of the central square training crops are drawn in: the eval crop's for ``center``, None for ``full``."""
    return crop_size if crop_region == "center" else None


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """``300``, ``90s``, ``5m``, ``1.5h``, ``1h30m`` -> seconds; a one-line error naming ``time_limit`` else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    parts = re.findall(r"\s*(\d+(?:\.\d+)?)\s*(min|[smh]?)", str(text).lower())
    rebuilt = "".join(f"{n}{u}" for n, u in parts)
    whole = rebuilt == re.sub(r"\s+", "", str(text).lower())
    if not parts or not whole or (len(parts) > 1 and not all(u for _, u in parts)):
        raise TransferlabError(f"{opt('time_limit', text)}: not a duration; give seconds (300) or a number with a "
                               "unit: 90s, 5m, 1.5h, 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def make_config(preset: str | None = None, **overrides: Any) -> RunConfig:
    """Build a validated config from a preset plus explicit overrides (``None`` values ignored)."""
    name = preset or "default"
    if name not in PRESETS:
        raise TransferlabError(f"{opt('preset')}: unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["preset"] = name
    if values.get("time_limit") and "epochs" not in values:  # the clock, not a count, ends the run
        values["epochs"] = TIME_LIMIT_EPOCHS
    return RunConfig.from_dict(values).validate(force=True)  # the ceilings are checked where the run starts


def defaults() -> dict[str, Any]:
    """Every RunConfig field's default, as ``config.json`` writes values (tuples as lists)."""
    return json.loads(json.dumps({f.name: _default(f) for f in dataclasses.fields(RunConfig)}))
