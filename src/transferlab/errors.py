"""The one exception type that reaches users as a single line, and how it names options.

A message names an option with :func:`opt`. From Python it reads as the parameter
(``model='resnet9000': unknown model``); the command line shows the flag instead
(``--model resnet9000: unknown model``), through :meth:`TransferlabError.cli_message`.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = ["TransferlabError", "WriteError", "opt", "render", "first_line"]

_MARK, _SEP = "\x1f", "\x1e"
_NO_VALUE = object()
# Options that are switches: True from Python, a bare flag on the command line.
SWITCHES = frozenset({"resume", "force", "overwrite", "skip_bad_images", "deterministic", "quiet", "tta"})
# Python parameters whose flag has another name.
FLAGS = {"fmt": "format", "spec": "study"}


def opt(name: str, value: object = _NO_VALUE) -> str:
    """An option inside an error message: ``name=value`` from Python, ``--name value`` on the command line."""
    return f"{_MARK}{name}{'' if value is _NO_VALUE else _SEP + str(value)}{_MARK}"


def render(text: str, cli: bool = False, keys: Collection[str] = ()) -> str:
    """``text`` with every :func:`opt` marker spelled for Python or for the command line; names in ``keys`` are
    spelled as the keys of a config file (``epochs``, ``lr 5.0``)."""
    def spell(match: re.Match[str]) -> str:
        name, sep, value = match.group(1).partition(_SEP)
        if name in keys:
            return f"{name} {value}" if sep else name
        if cli:
            flag = "--" + FLAGS.get(name, name).replace("_", "-")
            return f"{flag} {value}" if sep else flag
        if sep:
            return f"{name}={value!r}" if value and not _is_number(value) else f"{name}={value}"
        return f"{name}=True" if name in SWITCHES else f"{name}="

    return re.sub(f"{_MARK}([^{_MARK}]*){_MARK}", spell, text)


def first_line(exc: BaseException, limit: int | None = None, default: str | None = None, typed: bool = False) -> str:
    """The first line of an exception's message (cut to ``limit`` characters), for a one-line error.

    An exception with no text gives ``default``, or its type's name (``EOFError`` from an empty file);
    ``typed`` puts the type's name in front (``OSError: disk full``).
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if default is None or typed else default
    line = text.splitlines()[0][:limit]
    return f"{type(exc).__name__}: {line}" if typed else line


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class TransferlabError(Exception):
    """A problem the user can fix: the message names the file or option and what to do.

    The CLI prints it as one line (no traceback) and exits with status 2. ``str()`` names
    options as Python parameters; an f-string that embeds the error keeps the option
    markers, so a message wrapped in another one still reads right in both places.
    """

    @property
    def raw(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return render(self.raw)

    def __format__(self, spec: str) -> str:
        return format(self.raw, spec)

    def cli_message(self) -> str:
        return render(self.raw, cli=True)


class WriteError(TransferlabError, OSError):
    """A file that could not be written (read-only, permission denied, disk full): one line for the user, and
    still an :class:`OSError` for code that handles those (its ``errno`` and ``strerror`` are the cause's)."""

    def __init__(self, path: object, cause: BaseException) -> None:
        strerror = cause.strerror if isinstance(cause, OSError) and cause.strerror else first_line(cause, 200)
        OSError.__init__(self, getattr(cause, "errno", None) or 0, strerror)
        self.args = (f"{path}: cannot write ({strerror}); free space, fix the permissions, or write elsewhere",)
