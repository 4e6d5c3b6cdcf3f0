"""The command line: a thin layer over the Python API.

The names below are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._faces import lazy_face

_EXPORTS = {  # module -> the public names it lends the package
    "commands": ("main", "build_parser"),
}
__all__ = ["main", "build_parser"]
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .commands import build_parser, main
