"""``train --config FILE``: a run's settings from a YAML or JSON file, such as a run's own ``config.json``."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ..config import RunConfig, make_config, upgrade
from ..errors import TransferlabError, first_line, opt, render
from ..files import read_settings

__all__ = ["CONFIG_SUFFIXES", "BOOKKEEPING", "read_config_file"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Keys of a saved config.json that say where a run was, not how it trains: a file that holds them still reads
# (a run's own config.json is a valid --config), and they are left out, so the new run goes where its
# command says (--out, else runs/<data>-<model>), never into the run the file came from.
BOOKKEEPING = frozenset({"out"})
MAX_CONFIG_BYTES = 1 << 20  # a run's settings are a few hundred bytes
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_FLOATS = frozenset(f.name for f in dataclasses.fields(RunConfig) if f.type in ("float", "float | None"))


def read_config_file(path: str | Path, force: bool = False) -> dict[str, Any]:
    """The settings of a ``--config`` FILE (YAML or JSON, such as a run's ``config.json``), checked.

    Every key must be a :class:`RunConfig` field (:data:`BOOKKEEPING` keys are read and dropped) and the
    values must make a valid config with the preset the file names (or the default one); else a one-line
    error names the file and the key. ``force`` accepts values above the ceilings, as ``train --force``.
    """
    path = Path(path).expanduser()
    values = _parse_config(path)
    if not isinstance(values, dict):
        raise TransferlabError(f"{path}: not a mapping of settings (key: value lines, or a JSON object)")
    values = upgrade({str(k): v for k, v in values.items() if k not in BOOKKEEPING})
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TransferlabError(f"{path}: unknown key {unknown[0]!r}{hint}; `transferlab train --print-config` "
                               "shows every key")
    if path.suffix.lower() != ".json":  # YAML 1.1 reads 2e-5 as text
        values = {k: float(v) if k in _FLOATS and isinstance(v, str) and _NUMBER.fullmatch(v) else v
                  for k, v in values.items()}
    _check_nested(path, values)
    try:
        make_config(values.get("preset"), **{k: v for k, v in values.items() if k != "preset"}).validate(force=force)
    except TransferlabError as exc:
        raise TransferlabError(f"{path}: {render(exc.raw, cli=True, keys=known)}") from None
    except (TypeError, ValueError) as exc:
        raise TransferlabError(f"{path}: bad value ({first_line(exc, 200)})") from None
    return values


def _parse_config(path: Path) -> Any:
    """A config file's content: JSON for ``.json``, YAML (which JSON also is) for ``.yaml``/``.yml``."""
    if path.suffix.lower() not in CONFIG_SUFFIXES:
        raise TransferlabError(f"{opt('config', path)}: give a .yaml, .yml or .json file (such as a run's "
                               "config.json)")
    return read_settings(path, "config", "give the settings as JSON", MAX_CONFIG_BYTES)


def _check_nested(path: Path, values: dict[str, Any]) -> None:
    """The two fields that hold more than one value, in their shapes (which also bounds what YAML aliases
    can make of them): ``head_map`` class -> list of ImageNet indices or names, ``extra`` a flat mapping."""
    head_map = values.get("head_map")
    if head_map is not None and not (
            isinstance(head_map, dict) and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(t, (str, int)) for t in v)
                for k, v in head_map.items())):
        raise TransferlabError(f"{path}: head_map must map class names to lists of ImageNet indices or names, "
                               f"e.g. {{hotdog: [934]}}; got {repr(head_map)[:80]}")
    extra = values.get("extra")
    if extra is not None and not (isinstance(extra, dict) and all(
            isinstance(v, (str, int, float, bool)) or v is None for v in extra.values())):
        raise TransferlabError(f"{path}: extra must be a mapping of plain values (text, numbers, true/false)")
