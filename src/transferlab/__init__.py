"""transferlab: fine-tune an ImageNet-pretrained torchvision model on your own images."""

from __future__ import annotations

from .config import PRESETS, RunConfig, make_config
from .data import Dataset, resolve_data
from .errors import TransferlabError
from .inference import Predictor, evaluate_run, load
from .models import TransferModel, create_model, list_model_names, param_groups
from .train import RunResult, Trainer, finetune
from .transforms import Preprocessing
from .weights import resolve_weights

__version__ = "0.1.0"

__all__ = [
    "PRESETS", "RunConfig", "make_config", "Dataset", "resolve_data", "TransferlabError", "Predictor",
    "evaluate_run", "load", "TransferModel", "create_model", "list_model_names", "param_groups",
    "RunResult", "Trainer", "finetune", "Preprocessing", "resolve_weights", "__version__",
]
