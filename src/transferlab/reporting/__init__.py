"""What a person reads: a run's report.html, the study report, their figures and tables.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "run": ("write_run_report", "summary_html"),
    "study": ("summarize_study", "write_study_report", "study_rows"),
    "common": ("format_table", "figures_inline"),
}
__all__ = ["write_run_report", "summary_html", "summarize_study", "write_study_report", "study_rows", "format_table",
           "figures_inline"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .common import figures_inline, format_table
    from .run import summary_html, write_run_report
    from .study import study_rows, summarize_study, write_study_report
