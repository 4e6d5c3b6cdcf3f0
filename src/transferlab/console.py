"""What a run shows: log lines and progress bars in a terminal; in Jupyter, printed lines, HTML bars and an epoch table.

A terminal (the CLI) gets ``transferlab: ...`` log lines as before. In a Jupyter kernel with no
logging set up, the same lines are printed (they stay in the saved notebook) and the per-epoch
metrics grow as one HTML table, as Keras and fastai show them.
"""

from __future__ import annotations

import contextlib
import html
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from .errors import render

__all__ = ["Console", "TEST_LOG", "final_test_line", "format_scores", "in_notebook", "progress", "clear_of_bars",
           "close_bars", "setup_logging", "count"]

log = logging.getLogger("transferlab.train")
# The test split's scores at the end of a run, on a logger of their own: `transferlab train` prints them in its
# summary instead (setup_logging(test_line=False)), so they show once.
TEST_LOG = "transferlab.train.test"
TEST_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "roc_auc")


def count(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``: a number and its noun, as a line shows them."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), not in a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _logging_set_up() -> bool:
    return logging.getLogger("transferlab").hasHandlers()


class Console:
    """Lines and the epoch table of one run (silent when ``quiet``)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.notebook = not quiet and in_notebook() and not _logging_set_up()
        self.rows: list[dict[str, Any]] = []
        self._handle: Any = None

    def say(self, msg: str, *args: Any, logger: logging.Logger = log) -> None:
        """One line: logged (to ``logger``), and printed in a notebook."""
        if self.quiet:
            return
        text = render(msg % args if args else msg, cli=not self.notebook)  # options as flags, or as parameters
        if self.notebook:
            print(text, flush=True)
        else:
            logger.info("%s", text)

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
        self.say("%s", final_test_line(metrics), logger=logging.getLogger(TEST_LOG))


def final_test_line(metrics: dict[str, Any]) -> str:
    """``test (50 images, scored once on the final model): accuracy 0.8600 (95% CI 0.74–0.93), ...``: a finished
    run's test scores as its end shows them. A run without validation scored test after every epoch too, so
    its line does not say once."""
    test = metrics.get("test", {})
    when = "scored once on the final model" if metrics.get("val") else "the final model"
    base = test.get("baseline")
    beside = f"; always answering {base['class']} would score {base['accuracy']:.4f}" if base else ""
    return f"test ({test.get('images', 0)} images, {when}): {format_scores(test)}{beside}"


def format_scores(block: dict[str, Any]) -> str:
    """The scores of a metric block, each with its 95 % interval where ``block["intervals"]`` has one."""
    return ", ".join(f"{k} {score_text(block, k)}" for k in TEST_KEYS if isinstance(block.get(k), float))


def interval_text(pair: Sequence[float] | None, digits: int = 2) -> str:
    """``0.74–0.93`` (an empty string without an interval)."""
    ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(b, (int, float)) for b in pair)
    return f"{pair[0]:.{digits}f}\u2013{pair[1]:.{digits}f}" if ok else ""


def score_text(block: dict[str, Any], key: str = "accuracy", digits: int = 4) -> str:
    """``0.8600 (95% CI 0.74–0.93)``: a metric block's score with its interval where it has one."""
    value = block.get(key)
    if value is None:
        return "-"
    span = interval_text((block.get("intervals") or {}).get(key))
    return f"{value:.{digits}f}" + (f" (95% CI {span})" if span else "")


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


# Progress bars (stderr in a terminal, one HTML line each in Jupyter; silent with ``quiet``) and log setup.
T = TypeVar("T")
# In Jupyter our bars are HTML (below). huggingface_hub, imported through timm, imports tqdm.auto, which warns
# on stderr that ipywidgets is missing for widget bars that are never drawn: that one warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
_OPEN: set[tqdm] = set()  # bars being drawn


def progress(items: Iterable[T], total: int | None = None, desc: str = "", quiet: bool = False,
             unit: str = "it") -> Iterator[T]:
    """Wrap ``items`` in a progress bar on stderr unless ``quiet`` (or stderr is not a terminal)."""
    if quiet:
        yield from items
        return
    if in_notebook():  # one HTML bar updated in place, kept as a record (evaluation bars are cleared)
        yield from _notebook_bar(items, total, desc, unit, keep=not desc.startswith("eval"))
        return
    # disable=None: no bar when stderr is not a terminal, so logs and pipes get whole lines only
    bar = tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
               mininterval=0.5, disable=None)
    _OPEN.add(bar)
    try:
        yield from bar
    finally:
        _OPEN.discard(bar)
        bar.close()


def _notebook_bar(items: Iterable[T], total: int | None, desc: str, unit: str, keep: bool) -> Iterator[T]:
    """A progress bar as one HTML line in a Jupyter output, updated at most twice a second.

    tqdm's text bars write a line per update into a saved notebook, and its widget bars need
    ipywidgets; this needs only IPython, which a notebook has.
    """
    from IPython.display import HTML, display

    start = last = time.perf_counter()
    handle = display(HTML(_bar_html(desc, 0, total, unit, 0.0)), display_id=True)
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            now = time.perf_counter()
            if now - last >= 0.5:
                handle.update(HTML(_bar_html(desc, done, total, unit, now - start)))
                last = now
    finally:
        elapsed = time.perf_counter() - start
        handle.update(HTML(_bar_html(desc, done, total, unit, elapsed) if keep else ""))


def _bar_html(desc: str, done: int, total: int | None, unit: str, elapsed: float) -> str:
    rate = f", {done / elapsed:.2f} {unit}/s" if elapsed > 0 and done else ""
    bar = f"<progress value='{done}' max='{total}' style='width:16em'></progress> " if total else ""
    count = f"{done}/{total}" if total else f"{done}"
    return (f"<div style='font-family:monospace'>{html.escape(desc)} {bar}{count} {html.escape(unit)} "
            f"[{elapsed:.1f} s{rate}]</div>")


@contextlib.contextmanager
def clear_of_bars() -> Iterator[None]:
    """Standard output written inside lands clear of the bars on a terminal, which are drawn again after."""
    with tqdm.external_write_mode(file=sys.stdout):
        yield


def close_bars() -> None:
    """Close every bar still drawn (an error stopped its loop), so the next line starts on its own line."""
    for bar in list(_OPEN):
        bar.close()
    _OPEN.clear()


class _StderrHandler(logging.StreamHandler):
    """Lines to ``sys.stderr`` as it is when each is logged (a notebook, a test or a server thread may have
    replaced it since the handler was made)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(quiet: bool = False, test_line: bool = True) -> None:
    """Readable ``transferlab: message`` lines on stderr; warnings only when quiet. ``test_line=False`` leaves out
    a run's closing test scores (:data:`TEST_LOG`), for a caller that prints them itself."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not test_line:
        handler.addFilter(lambda record: record.name != TEST_LOG)
    root = logging.getLogger("transferlab")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
