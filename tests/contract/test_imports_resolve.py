"""Every import inside the package names something its module defines, the lazy ones in functions too.

Commands import their work on first use (so ``--help`` stays torch-free); a stale name there would only
fail when a user runs that command. This reads every ``from .x import y`` and checks it statically.
"""

from __future__ import annotations

import ast
from pathlib import Path

import transferlab

PACKAGE = Path(transferlab.__file__).parent


def _module_file(dotted: list[str]) -> Path | None:
    path = PACKAGE.parent.joinpath(*dotted)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If):  # TYPE_CHECKING blocks
            names |= {(a.asname or a.name) for n in ast.walk(node) if isinstance(n, ast.ImportFrom) for a in n.names}
    if path.name == "__init__.py":  # a face lends the names of its __all__
        for node in tree.body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
                names |= {e.value for e in node.value.elts}
    return names


def test_every_relative_import_names_something_that_exists():
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            target = _module_file(base)
            if target is None:
                missing.append(f"{path.name}:{node.lineno}: no module {'.'.join(base)}")
                continue
            defined = _names(target)
            missing += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {'.'.join(base)} has no {a.name}"
                        for a in node.names if a.name not in defined and _module_file([*base, a.name]) is None]
    assert not missing, missing
