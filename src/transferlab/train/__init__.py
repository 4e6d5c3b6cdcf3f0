"""The training engine: the Trainer, the loop, optimisers, head warm-up, checkpoints, torchrun.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "trainer": ("Trainer",),
    "context": ("RunContext",),
    "checkpoint": ("RunState",),
    "result": ("RunResult", "PreparedData"),
    "loop": ("Step", "train_one_epoch", "EpochState", "StopRequest", "TrainingInterrupted", "TrainingDiverged",
        "deterministic_mode"),
    "optim": ("build_optimizer", "build_scheduler", "fit_head"),
    "distributed": ("GlobalBatchNorm",),
    "probes": ("logistic", "probe_cv", "knn_cv", "logme"),
}
__all__ = ["Trainer", "RunContext", "RunState", "RunResult", "PreparedData", "Step", "train_one_epoch", "EpochState",
           "StopRequest", "TrainingInterrupted", "TrainingDiverged", "deterministic_mode", "build_optimizer",
           "build_scheduler", "fit_head", "GlobalBatchNorm", "logistic", "probe_cv", "knn_cv", "logme"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import RunState
    from .context import RunContext
    from .distributed import GlobalBatchNorm
    from .loop import (
        EpochState,
        Step,
        StopRequest,
        TrainingDiverged,
        TrainingInterrupted,
        deterministic_mode,
        train_one_epoch,
    )
    from .optim import build_optimizer, build_scheduler, fit_head
    from .probes import knn_cv, logistic, logme, probe_cv
    from .result import PreparedData, RunResult
    from .trainer import Trainer
