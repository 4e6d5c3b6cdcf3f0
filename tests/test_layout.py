"""The package's shape: no import cycles, a read-only side free of the training loop, small modules, a fast CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import transferlab

PACKAGE = Path(transferlab.__file__).parent
TRAINING = {"train", "loop", "optim", "batches"}  # the training engine
READ_ONLY = ("inference", "export", "serve", "reports", "runreport", "ranking", "heads")


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, function-level imports included."""
    modules = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem not in ("__main__", "__init__")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
                edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycles():
    graph = import_graph()
    cyclic = sorted(name for name in graph if name in reachable(graph, name))
    assert not cyclic, f"modules on an import cycle: {cyclic}"


def test_the_read_only_side_does_not_import_the_training_engine():
    graph = import_graph()
    for name in READ_ONLY:
        assert not reachable(graph, name) & TRAINING, (name, reachable(graph, name) & TRAINING)


def test_no_module_over_500_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_module_shadows_the_standard_library():
    assert not set(sys.stdlib_module_names) & {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}


def test_every_public_name_resolves_lazily():
    import transferlab.train  # noqa: F401 - importing submodules must not replace a public name with a module

    for name in transferlab.__all__:
        assert getattr(transferlab, name) is not None, name
        assert not isinstance(getattr(transferlab, name), type(transferlab)), f"transferlab.{name} is a module"
    with pytest.raises(AttributeError):
        transferlab.no_such_name  # noqa: B018


@pytest.mark.parametrize("argv", [["--help"], ["train", "-h"], ["study", "-h"], ["rank", "-h"], ["demo", "-h"],
                                  ["train", "--epochs", "x"],
                                  ["models", "mobilenet_v2"], ["cache"]])
def test_the_command_line_starts_without_torch(argv):
    """`--help`, every `-h`, argument errors, `models` and `cache` answer without importing torch."""
    code = ("import sys\nfrom transferlab.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_onnx_predict_module_imports_no_torch():
    code = "import sys, transferlab.export\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
