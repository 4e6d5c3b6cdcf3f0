"""What the run report and the study report share: plain-text tables, readers of run files, HTML pieces,
and figures shown inline in a notebook.

Figures come from :mod:`transferlab.reporting.figures` (matplotlib, ``pip install 'transferlab[report]'``);
without matplotlib the report still has every table, and says how to get the figures.
"""

from __future__ import annotations

import base64
import html
import logging
import re
from collections.abc import Sequence
from typing import Any

from ..console import in_notebook

__all__ = ["format_table", "html_table", "html_image", "REPORT_CSS",
           "figures_inline"]

log = logging.getLogger(__name__)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.1f}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table (readable as plain text) of ``rows``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


# --------------------------------------------------------------------------- the summary


# --------------------------------------------------------------------------- the best run


# --------------------------------------------------------------------------- report files


REPORT_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1a202c;max-width:1040px;
margin:2em auto;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #e2e8f0;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0;display:block;overflow-x:auto;max-width:100%}
th,td{padding:.35em .7em;border-bottom:1px solid #e2e8f0;
text-align:left;white-space:nowrap}th{background:#f7fafc}tr:first-child td{font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.small{display:flex;flex-wrap:wrap;gap:1em}.small figure{margin:0}figcaption{color:#4a5568;font-size:.85em}
pre{background:#f7fafc;padding:1em;overflow:auto;font-size:.85em}.muted{color:#718096}
"""


def html_table(rows: list[dict[str, Any]]) -> str:
    """An HTML table of ``rows`` (numbers right-aligned)."""
    if not rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0])
    body = []
    for row in rows:
        cells = []
        for value in row.values():
            text = str(value)
            numeric = bool(re.match(r"^[-+]?[\d.]+( ± [\d.]+)?( \([\d.]+–[\d.]+\))?$", text))
            cells.append(f"<td{' class=num' if numeric else ''}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_image(data: bytes, caption: str) -> str:
    """A PNG embedded as a base64 ``data:`` URL (the report stays one self-contained file)."""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(caption)}">'


def figures_inline() -> None:
    """In a notebook, let a cell that returns a matplotlib Figure show it as a PNG (as ``%matplotlib inline`` does)."""
    if not in_notebook():
        return
    from IPython import get_ipython
    from matplotlib.figure import Figure

    from .figures import png

    get_ipython().display_formatter.formatters["image/png"].for_type(Figure, png)


