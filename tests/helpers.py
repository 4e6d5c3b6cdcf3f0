"""Plain helpers the tests share (fixtures live in conftest.py, which imports these too).

``from helpers import make_folder`` works in every test folder: pytest puts ``tests/`` (the folder of the
root conftest.py) on ``sys.path``. No test file imports another test file.
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import io
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

HOTDOG_MINI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hotdog-mini"
NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"
NOTEBOOK_TRAIN_PER_CLASS = 40  # the notebook's slice of ELPV: 40 training and 25 test images a class


# --------------------------------------------------------------------------- generated images


def make_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (72, 64), seed: int = 0,
               mode: str = "RGB") -> Path:
    """A noisy image of one dominant color (classes are easy to tell apart)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").convert(mode).save(path)
    return path


def make_folder(root: Path, splits: dict[str, int], classes: dict[str, tuple[int, int, int]] | None = None,
                ext: str = ".png") -> Path:
    classes = classes or {"red": (200, 40, 40), "blue": (40, 40, 200)}
    for split, n in splits.items():
        for name, color in classes.items():
            for i in range(n):
                make_image(root / split / name / f"{name}_{i}{ext}", color, seed=hash((split, name, i)) % 1000)
    return root


def photo_subset(source: Path, dest: Path, train_per_class: int) -> Path:
    """Links to ``source``'s photos: the first ``train_per_class`` of each class in train/, and all of val/.

    The same photos, fewer of them: for tests whose subject is not accuracy (a tree of links, no copies).
    """
    for split in ("train", "val"):
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            photos = sorted(folder.iterdir())
            (dest / split / folder.name).mkdir(parents=True)
            for photo in photos[:train_per_class] if split == "train" else photos:
                (dest / split / folder.name / photo.name).symlink_to(photo)
    return dest


def random_images(n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random uint8 CHW images of growing height."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 30 + 3 * i, 40), generator=gen, dtype=torch.uint8) for i in range(n)]


# --------------------------------------------------------------------------- the notebook


def execute_notebook(root: Path) -> list:
    """examples/quickstart.ipynb run top to bottom in a fresh Jupyter kernel: its code cells, with their outputs.

    It runs as in a fresh clone with nothing beside it, as it is (its data is the installed ELPV package), in
    a folder under ``root``, and the kernel has a cache folder of its own. The executed copy stays in the tree.
    """
    import shutil

    import nbclient  # the test extras; `make test` installs them
    import nbformat

    work = root / "project" / "examples"
    work.mkdir(parents=True)
    shutil.copy(NOTEBOOK, work)
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    env = {**os.environ, "TRANSFERLAB_HOME": str(root / "transferlab-home")}
    where = {"metadata": {"path": str(work)}}
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", resources=where).execute(env=env)
    nbformat.write(nb, work / NOTEBOOK.name)
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def in_background(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` in a daemon thread: its Future (an unfinished one does not hold up the interpreter's exit)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            future.set_exception(exc)

    threading.Thread(target=run, name=getattr(fn, "__name__", "background"), daemon=True).start()
    return future


# --------------------------------------------------------------------------- the command line in this process


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """``transferlab ARGS`` in this process (no new interpreter importing torch): exit status, stdout, stderr.

    Tests whose subject is the process itself (signals, kills, a clean interpreter) start a real one.
    """
    from transferlab.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(["transferlab", *argv], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def run_reports_off() -> Iterator[None]:
    """Fine-tunes in this process skip their report.html (about 1.3 s of matplotlib each, most of a tiny run).

    Only for tests that never read a run's report: ``finetune`` writes it under a try/except that turns any
    failure into a log line, so such a test asserts nothing about it anyway. The run-report tests
    (tests/reporting) and the tests that read report.html keep it.
    """
    from unittest import mock

    from transferlab.workflows import finetuning

    with mock.patch.object(finetuning, "write_report", lambda run_dir, dataset=None: None):
        yield


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2 and exactly one line ``transferlab: error: ...`` holding every needle; the line."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("transferlab: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- a local web server


def serve_directory(directory: Path) -> http.server.ThreadingHTTPServer:
    """``directory`` over HTTP on a free loopback port, in a daemon thread; ``.shutdown()`` when done."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------- the package's import graph


def package_modules() -> dict[str, Path]:
    """dotted name below transferlab (``train.loop``; a package's face is ``train``) -> file."""
    import transferlab

    found = {}
    for path in Path(transferlab.__file__).parent.rglob("*.py"):
        parts = path.relative_to(Path(transferlab.__file__).parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    is_package = known[module].name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
    targets = set()
    for alias in node.names:
        dotted = f"{prefix}.{alias.name}" if prefix else alias.name
        targets.add(dotted if dotted in known else prefix)
    return {t for t in targets if t in known}


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported module: lazy}; TYPE_CHECKING imports are left out (they never run)."""
    known = package_modules()
    graph: dict[str, dict[str, bool]] = {}
    for name, path in known.items():
        edges: dict[str, bool] = {}
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for n in ast.walk(node)}
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and id(node) not in skip:
                for target in _resolve(name, node, known) - {name}:
                    edges[target] = edges.get(target, True) and id(node) not in top
        graph[name] = edges
    return graph


def reachable(graph: dict[str, dict[str, bool]], start: str, eager_only: bool = False) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt, lazy in graph[todo.pop()].items():
            if nxt not in seen and not (eager_only and lazy):
                seen.add(nxt)
                todo.append(nxt)
    return seen
