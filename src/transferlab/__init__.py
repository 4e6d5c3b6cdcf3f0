"""transferlab: fine-tune an ImageNet-pretrained torchvision or timm model on your own images.

The package is laid out by concept, each package importing only those before it in this order:
the root modules (config, errors, files, console, system, rundir) < data < models < evaluation <
inference < train < ranking < reporting < workflows < cli. The names below are imported on first
use (PEP 562), so ``import transferlab`` and the command line's ``--help`` do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._faces import install_moved_paths, lazy_face

__version__ = "0.1.0"

_EXPORTS = {  # module -> the public names it lends the package
    "config": ("PRESETS", "RunConfig", "make_config"),
    "data.datasets": ("Dataset", "resolve_data"),
    "data.transforms": ("Preprocessing",),
    "errors": ("TransferlabError",),
    "models.model": ("TransferModel", "create_model", "list_model_names", "param_groups"),
    "models.weights": ("resolve_weights",),
    "inference.predictor": ("Predictor", "evaluate_run", "load"),
    "train.trainer": ("Trainer",),
    "train.result": ("RunResult",),
    "ranking.ranker": ("rank",),
    "ranking.result": ("Ranking",),
    "workflows.finetuning": ("finetune",),
}
__all__ = ["PRESETS", "RunConfig", "make_config", "Dataset", "resolve_data", "TransferlabError", "Predictor",
           "evaluate_run", "load", "TransferModel", "create_model", "list_model_names", "param_groups",
           "RunResult", "Trainer", "finetune", "rank", "Ranking", "Preprocessing", "resolve_weights", "__version__"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
install_moved_paths(__name__)  # the flat layout's module paths (transferlab.infer, ...) for one release

if TYPE_CHECKING:
    from .config import PRESETS, RunConfig, make_config
    from .data.datasets import Dataset, resolve_data
    from .data.transforms import Preprocessing
    from .errors import TransferlabError
    from .inference.predictor import Predictor, evaluate_run, load
    from .models.model import TransferModel, create_model, list_model_names, param_groups
    from .models.weights import resolve_weights
    from .ranking.ranker import rank
    from .ranking.result import Ranking
    from .train.result import RunResult
    from .train.trainer import Trainer
    from .workflows.finetuning import finetune
