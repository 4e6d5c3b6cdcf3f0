"""What a run shows while it trains: log lines in a terminal; in Jupyter, printed lines and a growing epoch table.

A terminal (the CLI) gets ``transferlab: ...`` log lines as before. In a Jupyter kernel with no
logging set up, the same lines are printed (they stay in the saved notebook) and the per-epoch
metrics grow as one HTML table, as Keras and fastai show them.
"""

from __future__ import annotations

import html
import logging
import sys
from typing import Any

__all__ = ["Console", "in_notebook", "figures_inline"]

log = logging.getLogger("transferlab.train")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), not in a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def figures_inline() -> None:
    """In a notebook, let a cell that returns a matplotlib Figure show it as a PNG (as ``%matplotlib inline`` does)."""
    if not in_notebook():
        return
    from IPython import get_ipython
    from matplotlib.figure import Figure

    from .figures import png

    get_ipython().display_formatter.formatters["image/png"].for_type(Figure, png)


def _logging_set_up() -> bool:
    return logging.getLogger("transferlab").hasHandlers()


class Console:
    """Lines and the epoch table of one run (silent when ``quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.notebook = not quiet and in_notebook() and not _logging_set_up()
        self.rows: list[dict[str, Any]] = []
        self._handle: Any = None

    def say(self, msg: str, *args: Any) -> None:
        """One line: logged, and printed in a notebook."""
        if self.quiet:
            return
        if self.notebook:
            print(msg % args if args else msg, flush=True)
        else:
            log.info(msg, *args)

    def epoch(self, row: dict[str, Any], epochs: int, images_per_s: float) -> None:
        """An epoch's row: a log line in a terminal, a new row of the table in a notebook."""
        if self.quiet:
            return
        if not self.notebook:
            scores = "  ".join(f"{k} {v:.4f}" if "loss" in k else f"{k} {v:.3f}" for k, v in row.items()
                               if k not in ("epoch", "wall_s") and isinstance(v, float))
            log.info("epoch %d/%d  %s  %.1f img/s  %.1f s", row["epoch"], epochs, scores, images_per_s,
                     row["wall_s"])
            return
        self.rows.append({**row, "img/s": round(images_per_s, 1)})
        from IPython.display import HTML, display

        table = HTML(_table(self.rows))
        if self._handle is None:
            self._handle = display(table, display_id=True)
        else:
            self._handle.update(table)

    def done(self, metrics: dict[str, Any]) -> None:
        """The test split's scores, once, at the end."""
        test = metrics.get("test", {})
        keys = ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "roc_auc")
        scores = ", ".join(f"{k} {test[k]:.4f}" for k in keys if isinstance(test.get(k), float))
        self.say("test (%d images, scored once on the final model): %s", test.get("images", 0), scores)


def _cell(column: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("wall_s", "img/s") else f"{value:.4f}"
    return html.escape(str(value))


def _table(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c, row.get(c, ''))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
