"""Progress bars (stderr in a terminal, one HTML line each in Jupyter; silent with ``quiet``) and log setup."""

from __future__ import annotations

import html
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

from .console import in_notebook

__all__ = ["progress", "close_bars", "setup_logging"]

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


def close_bars() -> None:
    """Close every bar still drawn (an error stopped its loop), so the next line starts on its own line."""
    for bar in list(_OPEN):
        bar.close()
    _OPEN.clear()


def setup_logging(quiet: bool = False) -> None:
    """Readable ``transferlab: message`` lines on stderr; warnings only when quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("transferlab")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
