"""Shared fixtures: isolated caches, generated image folders, the real hotdog-mini photos, trained tiny runs.

Plain helpers (image makers, the in-process CLI, a local web server) live in helpers.py; tests import them
from there. Trained runs are session fixtures that tests only read: a test that changes one works on a copy.

Tiers: ``make check`` runs ``-m "not slow"`` (the edit loop); ``make test`` runs everything. ``slow`` marks
tests that train on real photos, start real processes (torchrun, signals, a Jupyter kernel, fresh
interpreters), or take many seconds for another reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import Future
from pathlib import Path

# One OpenMP / BLAS thread for torch and numpy here and in every process a test starts (set before either is
# imported): the tests' models and batches are tiny, and on a small or shared CPU spinning OpenMP threads make
# them many times slower, never faster; a second core serves a second process (the notebook's kernel, the
# torchrun workers, the CLI runs of the bad-input corpus). `OMP_NUM_THREADS=N make test` overrides it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Isolate every cache the code under test may write (weights, datasets) from the user's.
_HOME = Path(tempfile.mkdtemp(prefix="transferlab-tests-"))
os.environ["TRANSFERLAB_HOME"] = str(_HOME / "transferlab")
os.environ["TORCH_HOME"] = str(_HOME / "torch")
os.environ["HF_HUB_CACHE"] = str(_HOME / "hf-hub")

from helpers import (  # noqa: E402
    HOTDOG_MINI,
    execute_notebook,
    in_background,
    make_folder,
    make_image,
    random_images,
    run_cli,
    run_reports_off,
)

# The helpers' names stay importable from conftest for files written before helpers.py; new tests import helpers.
__all__ = ["HOTDOG_MINI", "make_folder", "make_image", "random_images", "run_cli"]


@pytest.fixture
def hotdog_mini() -> Path:
    if not HOTDOG_MINI.is_dir():
        pytest.skip(f"{HOTDOG_MINI} is absent")
    return HOTDOG_MINI


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """train/ and val/ with two color classes, 8 + 4 images each."""
    return make_folder(tmp_path / "colors", {"train": 8, "val": 4})


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy shared CPU two OpenMP threads are many times slower, never faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_run_reports():
    """Fine-tunes in the test skip report.html: for tests that never read it (see helpers.run_reports_off)."""
    with run_reports_off():
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny fine-tuned model on two color classes (64 px, one epoch): (run directory, data directory).

    Trained once for the whole session and shared: read it, never write into it (copy it first).
    """
    from transferlab.config import make_config
    from transferlab.workflows.finetuning import finetune

    root = tmp_path_factory.mktemp("tiny")
    data = make_folder(root / "colors", {"train": 8, "val": 3})
    finetune(make_config(data=str(data), model="mobilenet_v2", image_size=64, batch_size=8, epochs=1,
                         out=str(root / "run")), quiet=True)
    return root / "run", data


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory):
    """A copy of ``tiny_run`` exported once to ONNX at the default place: (run directory, data, Exported)."""
    from transferlab.inference.export import export_model

    run = tmp_path_factory.mktemp("tiny-onnx") / "run"
    shutil.copytree(tiny_run[0], run)
    return run, tiny_run[1], export_model(run, "onnx")


@pytest.fixture(scope="session", autouse=True)
def notebook_in_background(request, tmp_path_factory) -> Future | None:
    """The notebook tests' kernel (helpers.execute_notebook), started with the session when they are selected.

    It trains and ranks on a slice of ELPV for most of a minute in a process of its own, on one thread: on the
    second core, beside the tests that run before the notebook's (also on one thread), which then wait for it.
    None where no notebook test is selected.
    """
    selected = any(item.nodeid.startswith("tests/process/test_notebook.py") for item in request.session.items)
    if not selected:
        return None
    return in_background(execute_notebook, tmp_path_factory.mktemp("notebook"))
