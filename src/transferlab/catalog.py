"""The model catalog: every torchvision classifier transferlab fine-tunes, its family, freeze stages and weights.

Building it constructs every model (on the meta device), which takes seconds to minutes. The
catalog of the pinned torchvision ships as ``static/models.json``; a test checks it against a
fresh build, and ``python -m transferlab.catalog`` writes it again after a torchvision upgrade.
With another torchvision installed, the catalog is built on the spot.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from importlib import metadata, resources
from pathlib import Path
from typing import Any

__all__ = ["CATALOG_FILE", "build_catalog", "catalog", "find_models"]

CATALOG_FILE = "static/models.json"


def _torchvision_version() -> str:
    return metadata.version("torchvision").split("+")[0]


def build_catalog() -> dict[str, Any]:
    """The catalog from torchvision itself (slow)."""
    from .models import family_of, list_model_names, stage_names
    from .weights import imagenet_weights

    models = [{"name": name, "family": family_of(name).name, "stages": stage_names(name),
               "weights": [{"name": w.name, "file": Path(w.url).name} for w in imagenet_weights(name)]}
              for name in list_model_names()]
    return {"torchvision": _torchvision_version(), "models": models}


@functools.cache
def catalog() -> dict[str, Any]:
    """The shipped catalog when it matches the installed torchvision, else a fresh build."""
    shipped = json.loads(resources.files("transferlab").joinpath(CATALOG_FILE).read_text(encoding="utf-8"))
    if shipped.get("torchvision") == _torchvision_version():
        return shipped
    return build_catalog()


def find_models(pattern: str = "*") -> list[dict[str, Any]]:
    """Catalog entries whose name matches a shell-style ``pattern``."""
    return [m for m in catalog()["models"] if fnmatch.fnmatch(m["name"], pattern)]


def main() -> None:
    """Write ``static/models.json`` for the installed torchvision."""
    path = Path(str(resources.files("transferlab").joinpath(CATALOG_FILE)))
    from .files import atomic_write_text

    atomic_write_text(path, json.dumps(build_catalog(), indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
