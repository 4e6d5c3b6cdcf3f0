"""Which backbone for this data: ``transferlab rank`` and the ranking it writes (the result is torch-free).

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "ranker": ("rank", "offline_models"),
    "result": ("Ranking", "Candidate", "pick", "SCORE"),
}
__all__ = ["rank", "offline_models", "Ranking", "Candidate", "pick", "SCORE"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .ranker import offline_models, rank
    from .result import SCORE, Candidate, Ranking, pick
