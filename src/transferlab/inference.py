"""Use a finished run: load it, predict images, evaluate on a dataset."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data import IMAGE_EXTENSIONS, decode_one, resolve_data, to_tensor
from .errors import TransferlabError
from .models import TransferModel, create_model
from .train import eval_batch, evaluate, predict_logits, resolve_device
from .transforms import Preprocessing, resize_shorter
from .weights import load_state_dict

__all__ = ["Predictor", "load", "evaluate_run", "expand_paths"]


@dataclass
class Predictor:
    """A trained model with its class names and preprocessing."""

    model: TransferModel
    classes: tuple[str, ...]
    pre: Preprocessing
    device: torch.device

    def _tensor(self, item: str | Path | Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(item, (str, Path)):
            return decode_one(Path(item), self.pre)
        if isinstance(item, Image.Image):
            return resize_shorter(to_tensor(item.convert("RGB")), self.pre.resize_size, self.pre.mode)
        if isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.ndim == 3:
            return resize_shorter(item, self.pre.resize_size, self.pre.mode)
        raise TransferlabError("predict: give image paths, PIL images or uint8 CHW tensors")

    def predict_proba(self, images: Sequence[str | Path | Image.Image | torch.Tensor]) -> torch.Tensor:
        batch = eval_batch([self._tensor(item) for item in images], self.pre)
        return predict_logits(self.model, batch, self.pre, self.device).softmax(1)

    def predict(self, images: Sequence[str | Path | Image.Image | torch.Tensor]) -> list[dict[str, Any]]:
        """One dict per image: label and probabilities by class name."""
        probs = self.predict_proba(images)
        return [{"label": self.classes[int(p.argmax())],
                 "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p)}} for p in probs]


def load(run_dir: str | Path, device: str = "auto") -> Predictor:
    """Load ``RUN_DIR/model.safetensors`` (with class names and preprocessing from its metadata)."""
    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        raise TransferlabError(f"{path}: no trained model here; is {run_dir} a finished run directory?")
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        classes = tuple(json.loads(meta["class_names"]))
        pre = Preprocessing.from_dict(json.loads(meta["preprocessing"]))
        model_name = meta["model"]
    except Exception as exc:  # noqa: BLE001
        raise TransferlabError(f"{path}: not a transferlab model file ({exc})") from None
    model = create_model(model_name, len(classes))
    model.net.load_state_dict(load_state_dict(path))
    dev = resolve_device(device)
    return Predictor(model.to(dev, memory_format=torch.channels_last).eval(), classes, pre, dev)


def expand_paths(items: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded recursively to their image files (sorted)."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*")
                              if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")))
        elif path.is_file():
            out.append(path)
        else:
            raise TransferlabError(f"{path}: no such file or directory")
    return out


def evaluate_run(run_dir: str | Path, data: str, device: str = "auto", quiet: bool = True) -> dict[str, Any]:
    """Accuracy, per-class accuracy and confusion matrix of a run on a dataset's test split."""
    predictor = load(run_dir, device)
    ds = resolve_data(data)
    if set(ds.classes) != set(predictor.classes):
        raise TransferlabError(f"--data {data}: classes {list(ds.classes)} differ from the model's "
                               f"{list(predictor.classes)}")
    index = {c: i for i, c in enumerate(predictor.classes)}
    labels = torch.tensor([index[ds.classes[y]] for y in ds.test.labels], dtype=torch.long)
    from .data import decode_images

    images = eval_batch(decode_images(ds.test.paths, predictor.pre, quiet=quiet), predictor.pre)
    result = evaluate(predictor.model, images, labels, predictor.pre, predictor.device,
                      len(predictor.classes), quiet=quiet)
    return {"run": str(run_dir), "data": data, "split": ds.test_source, "images": len(labels),
            "accuracy": result["test_acc"], "loss": result["test_loss"],
            "per_class_accuracy": dict(zip(predictor.classes, result["per_class_acc"])),
            "class_names": list(predictor.classes), "confusion_matrix": result["confusion"]}
