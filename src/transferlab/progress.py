"""Progress bars and log setup (stderr; silent with ``quiet``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

__all__ = ["progress", "close_bars", "setup_logging"]

T = TypeVar("T")
_OPEN: set[tqdm] = set()  # bars being drawn


def progress(items: Iterable[T], total: int | None = None, desc: str = "", quiet: bool = False,
             unit: str = "it") -> Iterator[T]:
    """Wrap ``items`` in a progress bar on stderr unless ``quiet`` (or stderr is not a terminal)."""
    if quiet:
        yield from items
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
