"""The examples run in a fresh clone with nothing beside it: no path in them leaves the repository.

The notebook itself runs in tests/process/test_notebook.py (slow); this reads its cells only.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _strings(code: str) -> list[str]:
    """Every string literal of a code cell (IPython's % and ! lines left out)."""
    python = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    return [node.value for node in ast.walk(ast.parse(python))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def leaves_the_repository(text: str, folder: Path) -> bool:
    """Whether ``text``, read as a path from ``folder`` (a notebook's working directory), points outside the repo."""
    if re.match(r"^(~|[A-Za-z]:[\\/]|/|\\\\|https?://)", text):
        return True  # home, drive, absolute, network or web paths
    if not re.search(r"[\\/]", text) and text != "..":
        return False  # a plain word, not a path
    return ROOT not in [*(folder / text.replace("\\", "/")).resolve().parents, (folder / text).resolve()]


def test_there_is_a_notebook_to_check():
    assert [p.name for p in NOTEBOOKS] == ["quickstart.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_a_notebook_names_no_shared_folder_and_no_path_outside_the_repository(notebook):
    for cell in _cells(notebook):
        source = "".join(cell["source"])
        assert "shared" not in source.lower(), source  # ../shared exists beside the CI's clone, not a user's
        if cell["cell_type"] == "code":
            outside = [s for s in _strings(source) if leaves_the_repository(s, notebook.parent)]
            assert not outside, (outside, source)


def test_the_check_finds_what_the_notebook_used_to_need():
    folder = ROOT / "examples"
    for path in ("../../shared/datasets/hotdog-mini", "/work/shared/datasets", "~/photos", "C:\\photos",
                 "https://example.org/hotdog.zip", "../../other", ".."):
        assert leaves_the_repository(path, folder) == (path != ".."), path
    for path in ("runs/elpv-mini", "runs/quickstart", "../README.md", "elpv", "test", "defective"):
        assert not leaves_the_repository(path, folder), path
    old = 'DATA = "../../shared/datasets/hotdog-mini"\nphotos = sorted(pathlib.Path(DATA, "val"))'
    assert [s for s in _strings(old) if leaves_the_repository(s, folder)] == ["../../shared/datasets/hotdog-mini"]
