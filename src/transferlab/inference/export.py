"""Export a run's model to ONNX or TorchScript, check it against PyTorch, and predict with ONNX alone.

``export_model(run_dir)`` writes ``RUN_DIR/model.onnx`` (or ``model.ts``) plus
``RUN_DIR/model.json``: class names, preprocessing and the tensor names (one JSON
serves both formats; ``format``, ``file`` and ``parity`` describe the latest export, ``exports``
keeps one record per format: its file and its own parity check). The
model takes a float32 NCHW batch that is already resized, center-cropped and
normalised, with a dynamic batch dimension, and returns logits.

ONNX uses the torch.export-based exporter (``dynamo=True``, the default since
torch 2.9; it needs onnxscript, and works offline). TorchScript uses
``torch.jit.trace``, which torch deprecates but still supports.

This module imports torch only inside the export functions: :func:`onnx_predict`
needs just onnxruntime, numpy and Pillow, and is meant as a pattern to copy.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import load_rgb
from ..errors import TransferlabError, first_line, opt
from ..files import atomic_write, atomic_write_json
from ..rundir import check_output, locked

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAME", "TOLERANCE", "Exported", "export_model", "read_metadata",
           "preprocess", "softmax", "onnx_predict"]

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-4  # max abs difference of logits between the exported model and PyTorch
PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "nearest-exact": Image.Resampling.NEAREST,
               "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
               "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Exported:
    """Where an export went and how closely it matched PyTorch."""

    path: Path
    metadata_path: Path
    format: str
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


# --------------------------------------------------------------------------- export (needs torch)


def _export_onnx(net: Any, example: Any, path: str) -> None:
    import torch

    try:
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), verbose=False)
        program.save(path)
    except ImportError as exc:
        raise TransferlabError(f"{opt('fmt', 'onnx')} needs onnx and onnxscript ({exc}); "
                               "run `pip install 'transferlab[export]'`") from None
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        first = first_line(exc, 200, default="")
        raise TransferlabError(f"ONNX export failed ({type(exc).__name__}: {first}); "
                               f"try {opt('fmt', 'torchscript')}") from None


def _export_torchscript(net: Any, example: Any, path: str) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still works
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, path)


def _run_exported(fmt: str, path: str) -> Any:
    """A callable numpy batch -> numpy logits that runs the file just written."""
    if fmt == "onnx":
        ort = _onnxruntime()
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return run


def _check_parity(fmt: str, path: str, net: Any, batches: Sequence[Any], tolerance: float, target: Path) -> float:
    import torch

    run = _run_exported(fmt, path)
    worst = 0.0
    for batch in batches:
        with torch.inference_mode():
            expected = net(batch).numpy()
        got = np.asarray(run(batch.numpy()))
        if got.shape != expected.shape:
            raise TransferlabError(f"{target}: exported {fmt} model gives shape {got.shape} for a batch of "
                                   f"{len(batch)}, PyTorch {expected.shape}; not written (the batch dimension "
                                   f"is not dynamic); try the other {opt('fmt')}")
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        if not diff <= tolerance:
            raise TransferlabError(f"{target}: exported {fmt} model differs from PyTorch by {diff:.2e} (max abs, "
                                   f"batch of {len(batch)}; allowed {tolerance:.0e}); not written; "
                                   f"try the other {opt('fmt')}")
    return worst


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 batch_sizes: Sequence[int] = (1, 3), tolerance: float = TOLERANCE) -> Exported:
    """Write the run's model as ONNX or TorchScript plus its JSON metadata, verified against PyTorch.

    The exported file is checked on random image batches of each size in ``batch_sizes``
    before it replaces ``out``; a mismatch above ``tolerance`` raises and writes nothing.
    """
    if fmt not in FORMATS:
        raise TransferlabError(f"{opt('fmt', fmt)}: choose one of {', '.join(FORMATS)}")
    if len(set(batch_sizes)) < 2 or min(batch_sizes) < 1:
        raise TransferlabError(f"export: batch_sizes {tuple(batch_sizes)} must hold 2 or more different "
                               "positive sizes (to prove the dynamic batch dimension)")
    import torch

    from .. import __version__
    from ..data.transforms import normalize
    from .predictor import load

    target = Path(out) if out is not None else Path(run_dir) / f"model{FORMATS[fmt]}"
    metadata_path = target.with_suffix(".json")
    for path in (target, metadata_path):
        if path.is_dir():
            raise TransferlabError(f"{opt('out', target)}: {path} is a folder; give a file name, e.g. "
                                   f"{Path(path) / ('model' + FORMATS[fmt])}")
    for path in (target, metadata_path):
        check_output(run_dir, path, "out")
    if metadata_path.exists() and not _is_export_metadata(metadata_path):
        raise TransferlabError(f"{opt('out', target)}: {metadata_path} exists and is not the metadata of an export "
                               "(its sidecar would replace it); give the model file another name")
    if metadata_path == target:
        raise TransferlabError(f"{opt('out', target)}: the metadata goes to {metadata_path}; "
                               f"give the model file another suffix, e.g. {FORMATS[fmt]}")
    predictor = load(run_dir, device="cpu")
    into_run = target.absolute().parent.resolve() == Path(run_dir).resolve()
    # one process writes into a run directory at a time; an export elsewhere only reads the run (a read-only mount)
    with locked(Path(run_dir)) if into_run else contextlib.nullcontext():
        net = predictor.model.net.eval().to(memory_format=torch.contiguous_format)
        pre = predictor.pre
        generator = torch.Generator().manual_seed(0)

        def images(n: int) -> torch.Tensor:
            pixels = torch.randint(0, 256, (n, 3, pre.crop_size, pre.crop_size), dtype=torch.uint8, generator=generator)
            return normalize(pixels, pre, channels_last=False)

        example = images(2)  # not 1: the exporters may specialise a dimension of size 1
        batches = [images(n) for n in batch_sizes]
        worst = 0.0

        def write(tmp: str) -> None:
            nonlocal worst
            (_export_onnx if fmt == "onnx" else _export_torchscript)(net, example, tmp)
            worst = _check_parity(fmt, tmp, net, batches, tolerance, target)

        atomic_write(target, write)
        metadata = {
            "format": fmt, "file": target.name, "model": predictor.model_name,
            "class_names": list(predictor.classes), "mean": list(pre.mean), "std": list(pre.std),
            "crop_size": pre.crop_size, "resize_size": pre.resize_size, "interpolation": pre.interpolation,
            "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
            "input": "float32 RGB batch, NCHW, (pixel / 255 - mean) / std, after resizing the shorter side to "
                     "resize_size and center-cropping to crop_size",
            "input_shape": ["batch", 3, pre.crop_size, pre.crop_size], "output": "logits; softmax gives probabilities",
            "parity": {"max_abs_diff": worst, "tolerance": tolerance, "batch_sizes": list(batch_sizes)},
            "transferlab_version": __version__,
        }
        record = {"file": target.name, "parity": metadata["parity"]}
        metadata["exports"] = {**_previous_exports(metadata_path, metadata), fmt: record}
        atomic_write_json(metadata_path, metadata)
        return Exported(target, metadata_path, fmt, worst, tuple(batch_sizes))


def _is_export_metadata(path: Path) -> bool:
    """Whether ``path`` is the JSON an export wrote (so a new export may replace it)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(values, dict) and {"format", "class_names", "input_name", "transferlab_version"} <= values.keys()


def _previous_exports(path: Path, metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Other formats already exported next to this one from the same model (they share the JSON)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = ("model", "class_names", "mean", "std", "crop_size", "resize_size", "interpolation", "input_name")
    if not isinstance(previous, dict) or any(previous.get(k) != metadata[k] for k in same):
        return {}
    exports = previous.get("exports") or {}
    records = {f: r if isinstance(r, dict) else {"file": r} for f, r in exports.items()}  # older files: a name
    return {f: r for f, r in records.items() if f in FORMATS and (path.parent / str(r.get("file"))).is_file()}


# --------------------------------------------------------------------------- ONNX alone (no torch)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise TransferlabError("onnxruntime is not installed; run `pip install 'transferlab[export]'`") from None
    return onnxruntime


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON written next to an exported model."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        for key in ("class_names", "mean", "std", "crop_size", "resize_size", "interpolation", "input_name"):
            meta[key]  # noqa: B018 - a KeyError names the missing field
    except FileNotFoundError:
        raise TransferlabError(f"{path}: no model metadata; export with `transferlab export RUN_DIR`") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TransferlabError(f"{path}: not transferlab export metadata ({type(exc).__name__}: {exc}); "
                               "export again with `transferlab export RUN_DIR`") from None
    return meta


def _rgb(image: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """Paths, PIL images and uint8 HWC arrays as RGB, decoded as everywhere else (``images.load_rgb``)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8))
    return load_rgb(image)


def preprocess(image: Image.Image, meta: dict[str, Any]) -> np.ndarray:
    """RGB image -> float32 (3, crop, crop): resize the shorter side, center-crop, normalise.

    Follows torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` sizes and rounding.
    """
    width, height = image.size
    size, crop = int(meta["resize_size"]), int(meta["crop_size"])
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    image = image.resize((new_w, new_h), PIL_FILTERS[meta["interpolation"]])
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    array = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0
    array = (array - np.asarray(meta["mean"], np.float32)) / np.asarray(meta["std"], np.float32)
    return array.transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def onnx_predict(model_path: str | Path, images: Sequence[str | Path | Image.Image | np.ndarray],
                 metadata_path: str | Path | None = None, batch_size: int = 32) -> list[dict[str, Any]]:
    """Predict with an exported ONNX model and its JSON, using only onnxruntime, numpy and Pillow.

    Returns one ``{"label", "probabilities"}`` dict per image, like :meth:`Predictor.predict`.
    """
    model_path = Path(model_path)
    meta = read_metadata(metadata_path or model_path.with_suffix(".json"))
    if not model_path.is_file():
        raise TransferlabError(f"{model_path}: no such model file; export with `transferlab export RUN_DIR`")
    ort = _onnxruntime()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    classes = list(meta["class_names"])
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        batch = np.stack([preprocess(_rgb(item), meta) for item in images[start:start + batch_size]])
        probs = softmax(session.run(None, {meta["input_name"]: batch})[0])
        results.extend({"label": classes[int(p.argmax())],
                        "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}} for p in probs)
    return results
