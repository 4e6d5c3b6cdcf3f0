"""Crash-safe runs: killed or interrupted mid-epoch, a run resumes to bit-identical weights and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_folder
from safetensors.torch import load_file

from transferlab.rundir import model_stage

pytestmark = pytest.mark.slow  # real processes, killed and signalled

# 16 training images in batches of 4: four steps per epoch, a checkpoint after each.
RUN = ["--model", "mobilenet_v2", "--image-size", "64", "--batch-size", "4", "--epochs", "2",
       "--checkpoint-every", "1", "--deterministic", "--quiet"]


# Two runs go side by side: one thread each, or OpenMP's spinning threads fight over the cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "transferlab", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def position(run: Path) -> tuple[int, int] | None:
    """(whole epochs done, steps done in the next one) of ``run``'s checkpoint, or None."""
    try:
        state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    return int(state["epoch"]), int(state["step"])


def mtime(run: Path) -> int | None:
    path = run / "checkpoint.pt"
    return path.stat().st_mtime_ns if path.exists() else None


def pause_at_next_checkpoint(proc: subprocess.Popen, run: Path) -> tuple[int, int]:
    """Wait until ``run``'s checkpoint is written anew, stop the process there (SIGSTOP); the checkpoint's position."""
    before, deadline = mtime(run), time.monotonic() + 300
    while mtime(run) in (None, before):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before a new checkpoint: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no new checkpoint in {run} within 300 s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    return position(run)


def rows(run: Path) -> list[dict]:
    """metrics.jsonl (a row per stage) without the wall-clock times."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_then_interrupted_run_resumes_bit_identical(tmp_path):
    """With a validation split and best-epoch selection: the best epoch's state travels in the checkpoint."""
    data = make_folder(tmp_path / "colors", {"train": 10, "val": 4})  # 20 train images: 4 carved off, 16 train
    full, part = tmp_path / "full", tmp_path / "part"
    select = ["--val-fraction", "0.2", "--select-metric", "accuracy"]
    uninterrupted = start("--data", data, *RUN, *select, "--out", full)
    victim = start("--data", data, *RUN, *select, "--out", part)

    killed_at = pause_at_next_checkpoint(victim, part)
    if killed_at == (0, 0):  # the head warm-up's checkpoint: go on to one inside epoch 1
        os.kill(victim.pid, signal.SIGCONT)
        killed_at = pause_at_next_checkpoint(victim, part)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert killed_at[0] == 0 and 1 <= killed_at[1] < 4, killed_at  # in the middle of epoch 1
    assert not (part / "metrics.json").exists() and model_stage(part) == "head warm-up"  # usable, not finished

    # the documented resume command; once it has moved on, SIGINT: finish the step, checkpoint, exit 130
    resumed = start("--out", part, "--resume", "--quiet")
    seen = pause_at_next_checkpoint(resumed, part)
    assert seen > killed_at
    resumed.send_signal(signal.SIGINT)
    os.kill(resumed.pid, signal.SIGCONT)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transferlab: interrupted by SIGINT"), err
    assert lines[0].endswith(f"resume with: transferlab train --out {part} --resume")
    assert position(part) > seen  # the step in progress was finished and saved

    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read()
    final = subprocess.run([sys.executable, "-m", "transferlab", "train", "--out", str(part), "--resume", "--quiet"],
                           capture_output=True, text=True, timeout=600, env=ENV)
    assert final.returncode == 0, final.stderr
    assert not (part / "checkpoint.pt").exists()

    want, got = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    assert rows(part) == rows(full) and len(rows(full)) == 5  # decode, features, head warm-up, 2 epochs
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (full, part))
    for key in ("test_acc", "test_loss", "test", "val", "selection", "head_warmup", "per_class_acc", "confusion"):
        assert a[key] == b[key], key
    assert a["selection"]["metric"] == "accuracy" and a["val_images"] == 4 and a["train_images"] == 16


