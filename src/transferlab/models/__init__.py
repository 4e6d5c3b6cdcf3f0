"""Networks and their weights: torchvision and timm bodies with a new head, weight files, the catalog.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "model": ("TransferModel", "create_model", "list_model_names", "param_groups", "stage_names", "load_body",
        "model_source", "folded"),
    "weights": ("ResolvedWeights", "resolve_weights", "load_state_dict", "imagenet_categories"),
    "catalog": ("timm_catalog", "model_rows", "find_models"),
    "folding": ("fold_by_dataflow",),
}
__all__ = ["TransferModel", "create_model", "list_model_names", "param_groups", "stage_names", "load_body",
           "model_source", "folded", "ResolvedWeights", "resolve_weights", "load_state_dict", "imagenet_categories",
           "timm_catalog", "model_rows", "find_models", "fold_by_dataflow"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .catalog import find_models, model_rows, timm_catalog
    from .folding import fold_by_dataflow
    from .model import (
        TransferModel,
        create_model,
        folded,
        list_model_names,
        load_body,
        model_source,
        param_groups,
        stage_names,
    )
    from .weights import ResolvedWeights, imagenet_categories, load_state_dict, resolve_weights
