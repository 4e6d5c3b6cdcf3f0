"""The read-only side of a run: load it, predict, evaluate, export, serve. Nothing here trains.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "predictor": ("Predictor", "load", "evaluate_run", "tta_views", "TTA_VIEWS"),
    "forward": ("resolve_device", "use_bf16", "eval_batch", "predict_logits", "body_features", "cpu_has_amx"),
    "export": ("export_model", "onnx_predict", "read_metadata"),
    "serve": ("create_app", "make_server"),
}
__all__ = ["Predictor", "load", "evaluate_run", "tta_views", "TTA_VIEWS", "resolve_device", "use_bf16", "eval_batch",
           "predict_logits", "body_features", "cpu_has_amx", "export_model", "onnx_predict", "read_metadata",
           "create_app", "make_server"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .export import export_model, onnx_predict, read_metadata
    from .forward import body_features, cpu_has_amx, eval_batch, predict_logits, resolve_device, use_bf16
    from .predictor import TTA_VIEWS, Predictor, evaluate_run, load, tta_views
    from .serve import create_app, make_server
