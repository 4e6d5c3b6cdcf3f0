"""Study definitions: a named table of variants, each a dict of overrides of one base config.

A study file (YAML or JSON) looks like::

    name: mine
    description: what it asks
    base: {epochs: 3}                  # optional; command-line options win over it
    variants:
      finetune: {}
      probe: {freeze: body}
      half: {freeze: half}             # symbolic: resolved from the model's stages
    groups:                            # optional: one small plot per group
      freeze depth: [finetune, half, probe]

``freeze: half`` freezes about half of the model's stages, ``freeze: all_but_last``
all stages but the last; both are resolved from ``models.stage_names(model)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import TransferlabError, opt
from ..files import read_settings

__all__ = ["Study", "BUILTIN_STUDIES", "STUDY_ALIASES", "SYMBOLIC_FREEZE", "load_study", "study_from_dict",
           "resolve_freeze", "list_studies"]

SYMBOLIC_FREEZE = ("half", "all_but_last")
STUDY_ALIASES = {"seed": "recipe"}  # earlier names of built-in studies
_KEYS = ("name", "description", "base", "variants", "groups")
_RESERVED = ("out", "seed")  # set by the study runner for each run
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Study:
    """Named variants of a base config, plus groups of variants to plot together."""

    name: str
    variants: dict[str, dict[str, Any]]
    description: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    source: str = "built-in"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "base": self.base,
                "variants": self.variants, "groups": self.groups, "source": self.source}


BUILTIN_STUDIES: dict[str, dict[str, Any]] = {
    "recipe": {
        "description": "the seed recipe's comparison and its ablations: fine-tune vs. scratch, linear probe (its "
                       "head trains head_warmup_epochs + epochs, as long as a fine-tune's), freeze depth, head/body "
                       "lr ratio, head from ImageNet rows",
        "variants": {
            "finetune": {},
            "scratch": {"weights": "none"},
            "linear_probe": {"freeze": "body"},
            "freeze_stem": {"freeze": "stem"},
            "freeze_half": {"freeze": "half"},
            "freeze_all_but_last": {"freeze": "all_but_last"},
            "lr_ratio_1": {"head_lr_mult": 1.0},
            "lr_ratio_100": {"head_lr_mult": 100.0},
            "head_imagenet": {"head_init": "imagenet"},
        },
        "groups": {
            "freeze depth": ["finetune", "freeze_stem", "freeze_half", "freeze_all_but_last", "linear_probe"],
            "head/body lr ratio": ["lr_ratio_1", "finetune", "lr_ratio_100"],
            "head init": ["finetune", "head_imagenet"],
        },
    },
    "scratch": {
        "description": "the seed's one comparison: fine-tune vs. the same network from scratch",
        "variants": {"finetune": {}, "scratch": {"weights": "none"}},
    },
}


def study_from_dict(values: Any, source: str) -> Study:
    """Validate a study definition; every error names ``source`` and the offending key."""
    if not isinstance(values, dict):
        raise TransferlabError(f"{source}: a study is a mapping with 'variants' (and optional name, description, "
                               "base, groups)")
    unknown = sorted(set(values) - set(_KEYS))
    if unknown:
        raise TransferlabError(f"{source}: unknown study key(s) {', '.join(unknown)}; known keys: {', '.join(_KEYS)}")
    variants = values.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise TransferlabError(f"{source}: 'variants' must map variant names to overrides, e.g. "
                               "variants: {probe: {freeze: body}}")
    clean: dict[str, dict[str, Any]] = {}
    for name, overrides in variants.items():
        name = str(name)
        where = f"{source}: variant {name!r}"
        if not _NAME_RE.match(name):
            raise TransferlabError(f"{where}: use letters, digits, '_', '-' or '.' (it becomes a folder name)")
        overrides = {} if overrides is None else overrides
        if not isinstance(overrides, dict):
            raise TransferlabError(f"{where}: expected a mapping of config keys, got {overrides!r}")
        _check_overrides(overrides, where)
        clean[name] = dict(overrides)
    base = values.get("base") or {}
    if not isinstance(base, dict):
        raise TransferlabError(f"{source}: 'base' must be a mapping of config keys")
    _check_overrides(base, f"{source}: base")
    groups = values.get("groups") or {}
    if not isinstance(groups, dict):
        raise TransferlabError(f"{source}: 'groups' must map a title to a list of variant names")
    for title, members in groups.items():
        if not isinstance(members, list) or not members:
            raise TransferlabError(f"{source}: group {title!r}: expected a list of variant names")
        missing = [str(m) for m in members if str(m) not in clean]
        if missing:
            raise TransferlabError(f"{source}: group {title!r}: no variant named {', '.join(missing)}; "
                                   f"variants: {', '.join(clean)}")
    name = str(values.get("name") or Path(source).stem)
    return Study(name=name, variants=clean, description=str(values.get("description") or ""), base=dict(base),
                 groups={str(t): [str(m) for m in ms] for t, ms in groups.items()}, source=source)


def _check_overrides(overrides: dict[str, Any], where: str) -> None:
    reserved = [k for k in _RESERVED if k in overrides]
    if reserved:
        raise TransferlabError(f"{where}: {', '.join(reserved)} cannot be set per variant "
                               f"(the study sets them: {opt('out', 'DIR/<variant>/seed<k>')}, {opt('seeds')})")
    values = dict(overrides)
    if values.get("freeze") in SYMBOLIC_FREEZE:
        values["freeze"] = "none"
    try:
        config = RunConfig.from_dict(values, source=where)  # unknown keys: an error naming them
    except (TypeError, ValueError) as exc:
        raise TransferlabError(f"{where}: bad value ({exc})") from None
    try:
        config.validate()
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise TransferlabError(f"{where}: bad value ({exc})") from None


def _read(path: Path) -> Any:
    return _bounded(read_settings(path, "spec", "write the study as JSON"), path)


MAX_SPEC_VALUES, MAX_SPEC_DEPTH = 10_000, 32  # a study is a short list of settings


def _bounded(values: Any, path: Path) -> Any:
    """``values`` if they are a study's size; YAML aliases are counted as often as they are used (an alias bomb)."""
    pending, count = [(values, 0)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_SPEC_VALUES or depth > MAX_SPEC_DEPTH:
            raise TransferlabError(f"{opt('spec', path)}: over {MAX_SPEC_VALUES:,} values or {MAX_SPEC_DEPTH} levels "
                                   "deep (YAML aliases expand); a study is a short list of settings")
        if isinstance(value, dict):
            pending.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            pending.extend((v, depth + 1) for v in value)
    return values


def load_study(spec: str | Path) -> Study:
    """A built-in study by name, or a ``.yaml``/``.yml``/``.json`` file."""
    name = STUDY_ALIASES.get(str(spec), str(spec))
    if name in BUILTIN_STUDIES:
        return study_from_dict({"name": name, **BUILTIN_STUDIES[name]}, source=f"built-in study {name}")
    path = Path(spec).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise TransferlabError(f"{opt('study', spec)}: not a built-in study ({', '.join(BUILTIN_STUDIES)}) "
                               "nor a .yaml/.json file")
    if not path.is_file():
        raise TransferlabError(f"{opt('study', spec)}: no such file")
    return study_from_dict(_read(path), source=str(path))


def resolve_freeze(value: str, model: str) -> str:
    """``half`` / ``all_but_last`` -> a stage name of ``model``; other values unchanged."""
    if value not in SYMBOLIC_FREEZE:
        return value
    from ..models.model import stage_names

    stages = stage_names(model)[1:-1]  # without "none" and "body"
    if len(stages) < 2:
        raise TransferlabError(f"{opt('freeze', value)}: {model} has only {len(stages)} stage(s); name a stage instead")
    if value == "half":
        return stages[math.ceil(len(stages) / 2) - 1]
    return stages[-2]


def list_studies() -> str:
    """The built-in studies and their variants, as text."""
    lines = []
    for name, values in BUILTIN_STUDIES.items():
        lines.append(f"{name}: {values['description']}")
        width = max(len(v) for v in values["variants"])
        for variant, overrides in values["variants"].items():
            text = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(the base config)"
            lines.append(f"  {variant:<{width}}  {text}")
    return "\n".join(lines)
