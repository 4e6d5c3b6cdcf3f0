"""The one exception type that reaches users as a single line."""

from __future__ import annotations

__all__ = ["TransferlabError"]


class TransferlabError(Exception):
    """A problem the user can fix: the message names the file or option and what to do.

    The CLI prints it as one line (no traceback) and exits with status 2.
    """
