"""The model catalog: every torchvision and timm classifier transferlab fine-tunes, its freeze stages and weights.

Building it constructs every model (on the meta device), which takes minutes. The catalogs
of the pinned torchvision and timm ship as ``static/models.json`` and ``static/timm_models.json``;
tests check them against fresh builds, and ``python -m transferlab.models.catalog`` writes them again
after an upgrade. With another torchvision installed, its catalog is built on the spot; with
another timm, its names and tags are read from timm and the stages left out.

Nothing here imports torch unless a catalog has to be built.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from ..errors import first_line

__all__ = ["CATALOG_FILE", "TIMM_CATALOG_FILE", "ModelRow", "build_catalog", "build_timm_catalog", "catalog",
           "timm_catalog", "find_models", "find_timm_models", "model_rows"]

CATALOG_FILE = "static/models.json"
TIMM_CATALOG_FILE = "static/timm_models.json"
log = logging.getLogger(__name__)


def _version(distribution: str) -> str:
    return metadata.version(distribution).split("+")[0]


def _torchvision_version() -> str:
    return _version("torchvision")


def build_catalog() -> dict[str, Any]:
    """The torchvision catalog from torchvision itself (slow)."""
    from .model import family_of, list_model_names, stage_names
    from .weights import imagenet_weights

    models = [{"name": name, "family": family_of(name).name, "stages": stage_names(name),
               "weights": [{"name": w.name, "file": Path(w.url).name} for w in imagenet_weights(name)]}
              for name in list_model_names()]
    return {"torchvision": _torchvision_version(), "models": models}


def _timm_weights(arch: str) -> list[dict[str, Any]]:
    """Each pretrained tag of a timm architecture (timm's default first) and where its file lives."""
    import timm.models as tm

    from ._hub import hub_files
    from .timm_source import custom_load

    out = []
    for name, cfg in tm.get_arch_pretrained_cfgs(arch).items():
        cfg = cfg.to_dict()
        if custom_load(cfg):
            continue
        hub = hub_files(cfg)
        where = ({"hub": hub[0] + (f"@{hub[1]}" if hub[1] else ""), "files": hub[2]} if hub else
                 {"file": Path(cfg["url"]).name} if cfg.get("url") else None)
        if where:
            out.append({"name": name.partition(".")[2], **where})
    return out


def _timm_entry(arch: str, stages: bool) -> dict[str, Any]:
    """One architecture's catalog entry; raises TransferlabError when transferlab cannot fine-tune it."""
    from . import timm_source as timm_models
    from .model import stage_names

    cfg = timm_models.pretrained_cfg(arch)
    _, height, width = cfg.get("input_size", (3, 224, 224))
    if height != width:
        from ..errors import TransferlabError

        raise TransferlabError(f"input {height}x{width} is not square")
    return {"name": arch, "family": "timm", "stages": stage_names(f"timm:{arch}") if stages else None,
            "weights": _timm_weights(arch)}


def build_timm_catalog(names: list[str] | None = None, stages: bool = True) -> dict[str, Any]:
    """The timm catalog from timm itself (every architecture, or ``names``): minutes with ``stages``."""
    import warnings

    from ..errors import TransferlabError
    from . import timm_source as timm_models

    models, excluded = [], {}
    for arch in names or timm_models.list_timm_models():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                models.append(_timm_entry(arch, stages))
        except TransferlabError as exc:
            excluded[arch] = str(exc).split(": ", 1)[-1]
        except Exception as exc:  # noqa: BLE001 - timm cannot build it here: left out, with the reason
            excluded[arch] = first_line(exc, 120, typed=True)
    return {"timm": _version("timm"), "models": models, "excluded": excluded}


def _shipped(file: str) -> dict[str, Any]:
    return json.loads(resources.files("transferlab").joinpath(file).read_text(encoding="utf-8"))


@functools.cache
def catalog() -> dict[str, Any]:
    """The shipped torchvision catalog when it matches the installed torchvision, else a fresh build."""
    shipped = _shipped(CATALOG_FILE)
    if shipped.get("torchvision") == _torchvision_version():
        return shipped
    return build_catalog()


@functools.cache
def timm_catalog() -> dict[str, Any]:
    """The shipped timm catalog when it matches the installed timm, else names and tags without stages."""
    shipped = _shipped(TIMM_CATALOG_FILE)
    if shipped.get("timm") == _version("timm"):
        return shipped
    log.warning("timm %s is not the %s the model catalog was made for: freeze stages are left out",
                _version("timm"), shipped.get("timm"))
    return build_timm_catalog(stages=False)


def find_models(pattern: str = "*") -> list[dict[str, Any]]:
    """torchvision catalog entries whose name matches a shell-style ``pattern``."""
    return [m for m in catalog()["models"] if fnmatch.fnmatch(m["name"], pattern)]


def find_timm_models(pattern: str = "*") -> list[dict[str, Any]]:
    """timm catalog entries whose name (``arch``, ``timm:arch`` or any ``arch.tag``) matches ``pattern``."""
    bare = pattern.removeprefix("timm:")
    out = []
    for m in timm_catalog()["models"]:
        if fnmatch.fnmatch(m["name"], bare):
            out.append(m)
        elif "." in bare:
            tags = [w for w in m["weights"] if fnmatch.fnmatch(f"{m['name']}.{w['name']}", bare)]
            if tags:
                out.append({**m, "weights": tags})
    return out


@dataclass(frozen=True)
class ModelRow:
    """One line of ``transferlab models``: the name to pass to ``--model`` and what it comes with."""

    name: str
    source: str  # "torchvision" or "timm"
    family: str
    weights: str  # e.g. "IMAGENET1K_V1: local (package:...)", "a1_in1k: download", "none (...)"
    stages: tuple[str, ...] | None  # None: not known without building the model

    @property
    def local(self) -> bool:
        return ": local (" in self.weights


def _torchvision_weights(entry: dict[str, Any]) -> str:
    from .weights import find_local_file

    for w in entry["weights"]:
        found = find_local_file(w["file"])
        if found is not None:
            return f"{w['name']}: local ({'hub cache' if found[1] == 'hub-cache' else found[1]})"
    return f"{entry['weights'][0]['name']}: download" if entry["weights"] else "none (--weights none or PATH)"


def _timm_weights_status(entry: dict[str, Any], tagged: bool) -> str:
    """Where ``--weights imagenet`` finds the weights, in the order weights.resolve_weights looks."""
    from ._lite import package_for_model, package_status

    package = None if tagged else package_for_model(entry["name"])
    if package is not None:
        path, status = package_status(package)
        if status == "ok":
            return f"{package.name}: local (package:{package.module})"
    if not entry["weights"]:
        return "none (--weights none or PATH)"
    first = entry["weights"][0]
    if "hub" in first:
        from ._hub import cached_hub_file

        repo, _, revision = first["hub"].partition("@")
        if cached_hub_file(repo, revision or None, first["files"]) is not None:
            return f"{first['name']}: local (hf cache)"
    else:
        from .weights import find_local_file

        found = find_local_file(first["file"])
        if found is not None:
            return f"{first['name']}: local ({'hub cache' if found[1] == 'hub-cache' else found[1]})"
    more = f"; or `transferlab weights install {package.name}`" if package else ""
    return f"{first['name']}: download{more}"


def model_rows(pattern: str = "*", sources: tuple[str, ...] = ("torchvision", "timm")) -> list[ModelRow]:
    """The rows of ``transferlab models PATTERN``: torchvision's models first, then timm's.

    A timm name that torchvision also has is shown as ``timm:NAME``, the way ``--model`` takes it.
    A pattern with a tag (``convnext_tiny.*``) lists one row per matching tag.
    """
    rows = []
    if "torchvision" in sources and not pattern.startswith("timm:"):
        for m in find_models(pattern):
            rows.append(ModelRow(m["name"], "torchvision", m["family"], _torchvision_weights(m), tuple(m["stages"])))
    if "timm" in sources:
        torchvision_names = {m["name"] for m in catalog()["models"]}
        tagged = "." in pattern
        for m in find_timm_models(pattern):
            names = [f"{m['name']}.{w['name']}" for w in m["weights"]] if tagged else [m["name"]]
            for i, name in enumerate(names):
                entry = {**m, "weights": m["weights"][i:i + 1]} if tagged else m
                shown = f"timm:{name}" if name.partition(".")[0] in torchvision_names else name
                rows.append(ModelRow(shown, "timm", "timm", _timm_weights_status(entry, tagged),
                                     tuple(m["stages"]) if m["stages"] is not None else None))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Write ``static/models.json`` and ``static/timm_models.json`` (or the one named) for what is installed."""
    from ..files import atomic_write_text

    which = (argv if argv is not None else sys.argv[1:]) or ["torchvision", "timm"]
    for kind, file, build in (("torchvision", CATALOG_FILE, build_catalog), ("timm", TIMM_CATALOG_FILE,
                                                                              build_timm_catalog)):
        if kind not in which:
            continue
        path = Path(str(resources.files("transferlab").joinpath(file)))
        data = build()
        if kind == "timm":  # one model per line: a 1,300-entry file that diffs well
            lines = ",\n".join(json.dumps(m, separators=(",", ":")) for m in data["models"])
            text = (f'{{"timm": {json.dumps(data["timm"])},\n"models": [\n{lines}\n],\n'
                    f'"excluded": {json.dumps(data["excluded"], indent=0, sort_keys=True)}}}\n')
        else:
            text = json.dumps(data, indent=1) + "\n"
        atomic_write_text(path, text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
