"""Shared fixtures: generated image folders, the real hotdog-mini photos, isolated caches."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Isolate every cache the code under test may write (weights, datasets) from the user's.
_HOME = Path(tempfile.mkdtemp(prefix="transferlab-tests-"))
os.environ["TRANSFERLAB_HOME"] = str(_HOME / "transferlab")
os.environ["TORCH_HOME"] = str(_HOME / "torch")
os.environ["HF_HUB_CACHE"] = str(_HOME / "hf-hub")

HOTDOG_MINI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hotdog-mini"


@pytest.fixture
def hotdog_mini() -> Path:
    if not HOTDOG_MINI.is_dir():
        pytest.skip(f"{HOTDOG_MINI} is absent")
    return HOTDOG_MINI


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


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny fine-tuned model on two color classes (64 px, one epoch): (run directory, data directory)."""
    from transferlab.config import make_config
    from transferlab.workflows.finetuning import finetune

    root = tmp_path_factory.mktemp("tiny")
    data = make_folder(root / "colors", {"train": 8, "val": 3})
    finetune(make_config(data=str(data), image_size=64, batch_size=8, epochs=1, out=str(root / "run")), quiet=True)
    return root / "run", data


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


def random_images(n: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random uint8 CHW images of growing height."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, 30 + 3 * i, 40), generator=gen, dtype=torch.uint8) for i in range(n)]
