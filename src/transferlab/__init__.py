"""transferlab: fine-tune an ImageNet-pretrained torchvision or timm model on your own images.

The names below are imported on first use (PEP 562), so ``import transferlab`` and the
command line's ``--help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "PRESETS": "config", "RunConfig": "config", "make_config": "config",
    "Dataset": "data", "resolve_data": "data",
    "TransferlabError": "errors",
    "Predictor": "inference", "evaluate_run": "inference", "load": "inference",
    "TransferModel": "models", "create_model": "models", "list_model_names": "models", "param_groups": "models",
    "RunResult": "train", "Trainer": "train", "finetune": "train",
    "rank": "ranker", "Ranking": "ranking",
    "Preprocessing": "transforms",
    "resolve_weights": "weights",
}

__all__ = [
    "PRESETS", "RunConfig", "make_config", "Dataset", "resolve_data", "TransferlabError", "Predictor",
    "evaluate_run", "load", "TransferModel", "create_model", "list_model_names", "param_groups",
    "RunResult", "Trainer", "finetune", "rank", "Ranking", "Preprocessing", "resolve_weights", "__version__",
]

if TYPE_CHECKING:
    from .config import PRESETS, RunConfig, make_config
    from .data import Dataset, resolve_data
    from .errors import TransferlabError
    from .inference import Predictor, evaluate_run, load
    from .models import TransferModel, create_model, list_model_names, param_groups
    from .ranker import rank
    from .ranking import Ranking
    from .train import RunResult, Trainer, finetune
    from .transforms import Preprocessing
    from .weights import resolve_weights


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
