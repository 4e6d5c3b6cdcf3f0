"""Scoring predictions: every metric and curve, calibration, and which epoch a run keeps.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "metrics": ("metric_block", "fit_temperature", "prediction_rows", "class_weights", "expected_calibration_error",
        "binary_curves"),
    "selection": ("Selector",),
}
__all__ = ["metric_block", "fit_temperature", "prediction_rows", "class_weights", "expected_calibration_error",
           "binary_curves", "Selector"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .metrics import (
        binary_curves,
        class_weights,
        expected_calibration_error,
        fit_temperature,
        metric_block,
        prediction_rows,
    )
    from .selection import Selector
