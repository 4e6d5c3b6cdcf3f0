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
from pathlib import Path

# One OpenMP / BLAS thread for torch and numpy here and in every process a test starts (set before either is
# imported): the tests' models and batches are tiny, and on a small or shared CPU spinning OpenMP threads make
# them many times slower, never faster. The few tests of large convolutions on real photos take every core
# (fixture `cores`). `OMP_NUM_THREADS=N make test` sets both.
_CORES = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Isolate every cache the code under test may write (weights, datasets) from the user's.
_HOME = Path(tempfile.mkdtemp(prefix="transferlab-tests-"))
os.environ["TRANSFERLAB_HOME"] = str(_HOME / "transferlab")
os.environ["TORCH_HOME"] = str(_HOME / "torch")
os.environ["HF_HUB_CACHE"] = str(_HOME / "hf-hub")

from helpers import HOTDOG_MINI, make_folder, make_image, random_images, run_cli, run_reports_off  # noqa: E402

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


@pytest.fixture(scope="session")
def cores() -> int:
    """The threads for a test of large convolutions (real photos at full size): every core, or $OMP_NUM_THREADS.

    Alone on a quiet 2-core machine two threads take 0.6 of the time of one there; the session default is one.
    """
    return _CORES


@pytest.fixture
def all_cores(cores):
    """torch uses ``cores`` threads in this test."""
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
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
    finetune(make_config(data=str(data), image_size=64, batch_size=8, epochs=1, out=str(root / "run")), quiet=True)
    return root / "run", data


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory):
    """A copy of ``tiny_run`` exported once to ONNX at the default place: (run directory, data, Exported)."""
    from transferlab.inference.export import export_model

    run = tmp_path_factory.mktemp("tiny-onnx") / "run"
    shutil.copytree(tiny_run[0], run)
    return run, tiny_run[1], export_model(run, "onnx")
