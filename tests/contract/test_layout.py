"""The package's shape: packages in one layer order, no import cycles, a read-only side free of the training
loop, lazy faces, a CLI that starts without torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import import_graph, reachable

import transferlab

PACKAGE = Path(transferlab.__file__).parent
ROOT = "(root)"
# A package imports only packages before it here (and the root modules, which import no package).
LAYERS = (ROOT, "data", "models", "evaluation", "inference", "train", "ranking", "reporting", "workflows", "cli")
# The upward imports we keep, each lazy (inside a function) and for a reason:
UPWARD = {
    ("train.result", "reporting.run"),     # RunResult.summary / .plot draw with the run report's figures
    ("train.result", "reporting.common"),  # ... and show them inline in a notebook
}
READ_ONLY = ("inference", "reporting")  # predict, export, serve, report: never the training engine


def layer(module: str) -> str:
    head = module.split(".")[0]
    return head if head in LAYERS else ROOT


def test_every_package_imports_only_packages_before_it():
    graph = import_graph()
    wrong = []
    for name, edges in graph.items():
        for target in edges:
            if LAYERS.index(layer(target)) > LAYERS.index(layer(name)) and (name, target) not in UPWARD:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_the_upward_imports_we_keep_are_lazy_and_still_needed():
    graph = import_graph()
    for name, target in UPWARD:
        assert graph[name].get(target) is True, (name, target)


def test_no_import_cycles():
    graph = import_graph()
    cyclic = sorted(name for name in graph if name in reachable(graph, name, eager_only=True))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_the_read_only_side_does_not_import_the_training_engine():
    graph = import_graph()
    for name in graph:
        if layer(name) in READ_ONLY:
            engine = {m for m in reachable(graph, name) if layer(m) == "train"} - {"train.result"}
            assert not engine, (name, engine)


def test_the_root_holds_few_modules_and_no_package_is_crowded():
    root = [p.name for p in PACKAGE.glob("*.py")]
    assert len(root) <= 10, root
    for folder in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        assert folder.name in LAYERS, f"{folder.name}/ is a package outside the layer order"
        assert len(list(folder.glob("*.py"))) <= 14, folder


def test_faces_are_thin():
    """A package's face defines nothing: it lends its modules' names on first use."""
    for face in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(face.read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], face


def test_no_module_shadows_the_standard_library():
    assert not set(sys.stdlib_module_names) & {p.stem for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}


def test_every_public_name_resolves_lazily():
    import transferlab.train.trainer  # noqa: F401 - importing submodules must not replace a public name with a module

    for face in [transferlab, *(importlib.import_module(f"transferlab.{n}") for n in LAYERS[1:])]:
        for name in face.__all__:
            value = getattr(face, name)
            assert value is not None, name
            assert not isinstance(value, type(transferlab)), f"{face.__name__}.{name} is a module"
    with pytest.raises(AttributeError):
        transferlab.no_such_name  # noqa: B018


@pytest.mark.slow  # a fresh interpreter
def test_the_flat_layouts_module_paths_still_import_with_a_warning():
    """``transferlab.export`` (documented) and the rest of the old flat paths work for one release."""
    code = ("import warnings, sys\nwarnings.simplefilter('error')\nimport transferlab\n"
            "try:\n    import transferlab.export\nexcept DeprecationWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore')\nfrom transferlab.export import onnx_predict\n"
            "from transferlab.infer import eval_batch\nfrom transferlab.inference.forward import eval_batch as now\n"
            "assert eval_batch is now and callable(onnx_predict)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "transferlab.export moved to transferlab.inference.export" in proc.stdout


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize("argv", [["--help"], ["train", "-h"], ["study", "-h"], ["rank", "-h"], ["demo", "-h"],
                                  ["train", "--epochs", "x"],
                                  ["models", "mobilenet_v2"], ["cache"]])
def test_the_command_line_starts_without_torch(argv):
    """`--help`, every `-h`, argument errors, `models` and `cache` answer without importing torch."""
    code = ("import sys\nfrom transferlab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n"
            "    pass\nassert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # a fresh interpreter
def test_onnx_predict_module_imports_no_torch():
    code = "import sys, transferlab.inference.export\nassert 'torch' not in sys.modules\n"
    with warnings.catch_warnings():
        subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
