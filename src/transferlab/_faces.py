"""Lazy package faces (PEP 562) and the module paths that moved when the package was laid out by concept.

A face maps each public name to the module that defines it and imports that module on first use, so
``import transferlab`` and the command line's ``--help`` import no torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_face", "install_moved_paths", "MOVED"]


def lazy_face(package: str,
              exports: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a module to the names it lends the face."""
    exports = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__


# Module paths of the flat layout (before 0.2) -> where that code lives now; importable for one release.
MOVED = {
    "progress": "console", "images": "data.images", "transforms": "data.transforms", "cache": "data.cache",
    "batches": "data.batches", "timm_models": "models.timm_source", "folding": "models.folding",
    "weights": "models.weights", "catalog": "models.catalog", "hub_files": "models._hub",
    "lite_weights": "models._lite", "metrics": "evaluation.metrics", "selection": "evaluation.selection",
    "infer": "inference.forward", "export": "inference.export", "serve": "inference.serve", "loop": "train.loop",
    "optim": "train.optim", "features": "train.features", "probes": "train.probes", "heads": "train.head_init",
    "headfit": "train.head_fit", "checkpoints": "train.checkpoint", "outcome": "train.outcome",
    "results": "train.result", "distributed": "train.distributed", "ranker": "ranking.ranker",
    "reports": "reporting.common", "figures": "reporting.figures", "runreport": "reporting.run",
    "runfigures": "reporting.run_figures", "experiments": "workflows.study", "studies": "workflows.study_spec",
    "options": "cli.options",
}


class _Moved(types.ModuleType):
    """An old module path: every attribute is read from the module that holds the code now."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__dict__["_target"]), name)

    def __dir__(self) -> list[str]:
        return dir(importlib.import_module(self.__dict__["_target"]))


class _MovedPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        head, _, old = fullname.rpartition(".")
        if head != self.package or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        new = f"{self.package}.{MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        module = _Moved(spec.name)
        module.__dict__["_target"] = new
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        importlib.import_module(module.__dict__["_target"])


def install_moved_paths(package: str) -> None:
    """Let ``import package.OLD`` find the module that holds OLD's code now (once per process)."""
    if not any(isinstance(f, _MovedPaths) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedPaths(package))
