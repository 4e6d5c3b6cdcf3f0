"""Runs put together: one fine-tune (and ``--model auto``), fine-tune vs. scratch, the demo, studies.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "finetuning": ("finetune", "resolve_model", "choose_model"),
    "compare": ("compare_scratch", "demo", "DEMO"),
    "study": ("run_study", "plan_study"),
    "study_spec": ("Study", "load_study", "list_studies"),
}
__all__ = ["finetune", "resolve_model", "choose_model", "compare_scratch", "demo", "DEMO", "run_study", "plan_study",
           "Study", "load_study", "list_studies"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .compare import DEMO, compare_scratch, demo
    from .finetuning import choose_model, finetune, resolve_model
    from .study import plan_study, run_study
    from .study_spec import Study, list_studies, load_study
