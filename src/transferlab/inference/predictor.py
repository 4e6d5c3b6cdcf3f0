"""Use a finished run: load it, predict images (optionally with TTA), evaluate on a dataset.

Test-time augmentation (``tta=True``) averages the softmax over six views of each
image after the eval resize (shorter side = ``resize_size``): the center crop, its
horizontal flip, and the four corner crops (top-left, top-right, bottom-left,
bottom-right), all ``crop_size`` square.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from .. import rundir
from ..config import MAX_IMAGE_SIZE, PRECISIONS
from ..console import progress
from ..data.datasets import dataset_for, image_files, split_difference
from ..data.images import ImageError
from ..data.transforms import Preprocessing, decode_one, resize_shorter
from ..errors import TransferlabError, first_line, opt
from ..files import atomic_write_text
from ..models.model import TransferModel, create_model, folded
from ..models.weights import load_state_dict
from .forward import eval_batch, predict_logits, resolve_device

__all__ = ["Predictor", "ImageInput", "TTA_VIEWS", "tta_views", "load", "evaluate_run", "expand_paths"]

ImageInput = str | Path | Image.Image | torch.Tensor
TTA_VIEWS = ("center", "center_flipped", "top_left", "top_right", "bottom_left", "bottom_right")


def tta_views(image: torch.Tensor, crop_size: int) -> torch.Tensor:
    """The :data:`TTA_VIEWS` of one resized uint8 CHW image, stacked as (6, C, crop, crop)."""
    top_left, top_right, bottom_left, bottom_right, center = F.five_crop(image, [crop_size, crop_size])
    return torch.stack([center, center.flip(-1), top_left, top_right, bottom_left, bottom_right])


log = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A trained model with its class names and preprocessing.

    Predictions run through a BatchNorm-folded copy of ``model``, in fp32 unless
    ``precision`` says otherwise (see ``RunConfig.precision``).
    """

    model: TransferModel
    classes: tuple[str, ...]
    pre: Preprocessing
    device: torch.device
    model_name: str = ""
    precision: str = "fp32"
    stage: str = rundir.FINAL  # the run's stage the weights come from: an unfinished run's best so far

    def __post_init__(self) -> None:
        self._folded = folded(self.model)

    def __repr__(self) -> str:
        return (f"Predictor(model={self.model_name!r}, classes={self.classes!r}, crop={self.pre.crop_size}, "
                f"device={str(self.device)!r}, precision={self.precision!r})")

    def _logits(self, images: torch.Tensor, batch_size: int | None, quiet: bool = True) -> torch.Tensor:
        return predict_logits(self._folded, images, self.pre, self.device, batch_size, desc="evaluate", quiet=quiet,
                              precision=self.precision)

    def _tensor(self, item: ImageInput) -> torch.Tensor:
        """Decode one input and resize its shorter side to ``resize_size`` (a PIL image exactly like its file)."""
        if isinstance(item, (str, Path, Image.Image)):
            return decode_one(item, self.pre)
        if isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.ndim == 3 and item.shape[0] == 3:
            return resize_shorter(item, self.pre.resize_size, self.pre.mode)
        raise TransferlabError(f"predict: got {type(item).__name__}; give image paths, PIL images or "
                               "uint8 RGB tensors shaped (3, H, W) or (N, 3, H, W)")

    def _decode(self, images: Sequence[ImageInput], report: bool = False) -> list[torch.Tensor | ImageError]:
        """Decoded inputs; with ``report`` an image that cannot be decoded is returned as its error."""
        def one(item: ImageInput) -> torch.Tensor | ImageError:
            try:
                return self._tensor(item)
            except ImageError as exc:
                if not report:
                    raise
                return exc

        if len(images) < 2:
            return [one(item) for item in images]
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            return list(pool.map(one, images))

    def _probabilities(self, images: ImageInput | Sequence[ImageInput], tta: bool, batch_size: int,
                       report: bool) -> list[torch.Tensor | ImageError]:
        if batch_size <= 0:
            raise TransferlabError(f"predict: batch_size must be positive, got {batch_size}")
        items = _as_list(images)
        out: list[torch.Tensor | ImageError] = []
        for start in range(0, len(items), batch_size):
            decoded = self._decode(items[start:start + batch_size], report)
            good = [d for d in decoded if isinstance(d, torch.Tensor)]
            if not good:
                out.extend(decoded)
                continue
            if tta:
                views = torch.cat([tta_views(img, self.pre.crop_size) for img in good])
                probs = self._logits(views, None).softmax(1).view(len(good), len(TTA_VIEWS), -1).mean(1)
            else:
                probs = self._logits(eval_batch(good, self.pre), None).softmax(1)
            if not torch.isfinite(probs).all():
                raise TransferlabError(f"{self.model_name or 'the model'} gives non-finite probabilities (NaN or "
                                       "inf); its weights are damaged: train it again")
            rows = iter(probs)
            out.extend(d if isinstance(d, ImageError) else next(rows) for d in decoded)
        return out

    def predict_proba(self, images: ImageInput | Sequence[ImageInput], tta: bool = False,
                      batch_size: int = 32) -> torch.Tensor:
        """Softmax probabilities, shape (N, classes); with ``tta`` averaged over :data:`TTA_VIEWS`."""
        rows = self._probabilities(images, tta, batch_size, report=False)
        return torch.stack(rows) if rows else torch.empty(0, len(self.classes))

    def predict(self, images: ImageInput | Sequence[ImageInput], tta: bool = False, batch_size: int = 32,
                errors: str = "raise") -> list[dict[str, Any]]:
        """One dict per image: ``label`` and ``probabilities`` by class name (a single image gives a list of one).

        ``errors="report"``: an image that cannot be decoded gives ``{"error": message}`` in its
        place and the others are predicted; ``"raise"`` (the default) stops at the first one.
        """
        if errors not in ("raise", "report"):
            raise TransferlabError(f"{opt('errors', errors)}: choose raise or report")
        return [{"error": str(row)} if isinstance(row, ImageError) else
                {"label": self.classes[int(row.argmax())],
                 "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, row)}}
                for row in self._probabilities(images, tta, batch_size, report=errors == "report")]


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """A single image becomes a list of one; a uint8 (N, 3, H, W) tensor becomes N images."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images.unbind(0))
    if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
        return [images]
    return list(images)


def load(run_dir: str | Path, device: str = "auto", precision: str | None = "fp32") -> Predictor:
    """Load ``RUN_DIR/model.safetensors`` (with class names and preprocessing from its metadata).

    ``precision`` (fp32, bf16 or auto, as in ``RunConfig.precision``): fp32 gives the exact
    probabilities; bf16 is faster on GPUs and AMX CPUs and may move them by a few hundredths;
    None takes the run's own, so its evaluation repeats the run's last one.
    """
    if precision is not None and precision not in PRECISIONS:
        raise TransferlabError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    path = Path(run_dir) / rundir.MODEL
    if not path.is_file():
        raise TransferlabError(f"{path}: no trained model here; is {run_dir} a finished run directory?")
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            head = f"{meta['head']}.weight"
            head_rows = fh.get_slice(head).get_shape()[0] if head in fh.keys() else None
        classes = tuple(json.loads(meta["class_names"]))
        if len(classes) > MAX_CLASSES or (head_rows is not None and head_rows != len(classes)):
            raise TransferlabError(f"class_names names {len(classes)} classes and the head has {head_rows} outputs")
        pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
        model_name = meta["model"]
        precision = precision or json.loads(meta.get("config", "{}")).get("precision", "fp32")
        _check_metadata(classes, pre, precision)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc) if isinstance(exc, TransferlabError) else f"{type(exc).__name__}: {exc}"
        raise TransferlabError(f"{path}: not a transferlab model file ({reason}); train the run again") from None
    try:
        model = create_model(model_name, len(classes))
    except TransferlabError as exc:
        raise TransferlabError(f"{path}: made for a model this transferlab does not know ({exc})") from None
    state = load_state_dict(path)
    try:
        model.net.load_state_dict(state)
    except RuntimeError as exc:
        first = first_line(exc, 200)
        raise TransferlabError(f"{path}: its tensors do not fit {model_name} with {len(classes)} classes ({first}); "
                               "the file is damaged or was edited: train the run again") from None
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise TransferlabError(f"{path}: holds non-finite weights (NaN or inf); train the run again")
    dev = resolve_device(device)
    stage = meta.get("stage", rundir.FINAL)
    if stage != rundir.FINAL:
        log.warning("%s: the run is not finished; this model is its %s's, the best stage so far", run_dir, stage)
    return Predictor(model.to(dev, memory_format=torch.channels_last).eval(), classes, pre, dev, model_name,
                     precision, stage)


MAX_CLASSES = 100_000  # a model file naming more is not one transferlab wrote


def _check_metadata(classes: tuple[str, ...], pre: Preprocessing, precision: str) -> None:
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
        raise TransferlabError(f"class_names {list(classes)!r} are not two or more distinct names")
    numbers = [*pre.mean, *pre.std] if isinstance(pre.mean, (list, tuple)) and isinstance(pre.std, (list, tuple)) \
        else []
    if not (isinstance(pre.crop_size, int) and isinstance(pre.resize_size, int)
            and 0 < pre.crop_size <= pre.resize_size <= MAX_IMAGE_SIZE) or len(numbers) != 6 \
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) \
            or not all(v > 0 for v in pre.std):
        raise TransferlabError(f"preprocessing {pre.to_dict()} is not usable")
    pre.mode  # noqa: B018 - an unknown interpolation raises ValueError
    if precision not in PRECISIONS:
        raise TransferlabError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def expand_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded recursively to their image files, as training scans a class folder.

    A link that does not resolve (broken, or a loop) is kept, so that its row names the error; photos
    transferlab cannot read (HEIC, RAW, ...) are counted in one warning line, not passed over in silence.
    """
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out.extend(image_files(path))
        elif path.is_file() or path.is_symlink():
            out.append(path)
        elif os.path.lexists(path):
            raise TransferlabError(f"{path}: not a regular file (a device, FIFO or socket); give image files "
                                   "or folders of them")
        else:
            raise TransferlabError(f"{path}: no such file or directory")
    return out


def evaluate_run(run_dir: str | Path, data: str | None = None, device: str = "auto", quiet: bool = True,
                 tta: bool = False, per_image: str | Path | None = None) -> dict[str, Any]:
    """Every metric (:func:`~transferlab.evaluation.metric_block`) of a run on its own test split, at its precision.

    ``data``: where the run's data is now; None takes the data the run records
    (:meth:`~transferlab.rundir.RunDir.data`).

    The split is the run's own: a folder without ``val/`` or ``test/`` is split with the run's seed
    and fraction, and the test files must be the ones the run recorded (else the differences are
    named and nothing is scored). ``tta`` averages the probabilities of :data:`TTA_VIEWS`;
    ``per_image`` writes one CSV row per test image (path, label, predicted, correct, probabilities).
    """
    from ..evaluation.metrics import metric_block, prediction_rows
    from ..rundir import predictions_csv

    if per_image is not None:
        rundir.check_output(run_dir, per_image, "per_image")
    predictor = load(run_dir, device, precision=None)
    run = rundir.RunDir(Path(run_dir))
    data = data or run.data()
    recorded = run.test_split()[2]
    ds = dataset_for(run.config(), data=data, validation=False)
    if recorded is not None:
        difference = split_difference(recorded, ds.test_files())
        if difference:
            raise TransferlabError(f"{opt('data', data)}: its test split is not the run's ({difference}); give the "
                                   "data the run was trained on")
    if set(ds.classes) != set(predictor.classes):
        raise TransferlabError(f"{opt('data', data)}: classes {list(ds.classes)} differ from the model's "
                               f"{list(predictor.classes)}")
    index = {c: i for i, c in enumerate(predictor.classes)}
    labels = torch.tensor([index[ds.classes[y]] for y in ds.test.labels], dtype=torch.long)
    if tta:  # probabilities averaged over views; the metrics take their log as logits
        logits = _tta_probabilities(predictor, list(ds.test.paths), quiet).clamp(min=1e-12).log()
    else:
        from ..data.cache import decode

        decoded = decode(ds.test.paths, predictor.pre, quiet=quiet,
                         unusable="evaluate scores every test image: replace or remove the file")
        images = eval_batch(decoded.images, predictor.pre)
        logits = predictor._logits(images, None, quiet=quiet)
    block = metric_block(logits, labels, predictor.classes, "test", intervals=True)
    if per_image is not None:
        rows = prediction_rows([ds.relative(p) for p in ds.test.paths], labels.tolist(), logits.softmax(1),
                               predictor.classes)
        atomic_write_text(per_image, predictions_csv(rows, predictor.classes))
    return {"run": str(run_dir), "data": data, "source": ds.test_source, "tta": tta, **block}


def _tta_probabilities(predictor: Predictor, paths: list[Path], quiet: bool, batch_size: int = 32) -> torch.Tensor:
    """:meth:`Predictor.predict_proba` with ``tta`` over ``paths``, a batch at a time under a progress bar."""
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    return torch.cat([predictor.predict_proba(chunk, tta=True, batch_size=batch_size)
                      for chunk in progress(chunks, total=len(chunks), desc="evaluate", quiet=quiet, unit="batch")])
