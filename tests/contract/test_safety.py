"""Lose nothing, crash nowhere: the run directory's lock, damaged model files, bounded caches and decodes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from helpers import make_folder, make_image, run_cli
from safetensors.torch import load_file, save_file

from transferlab import TransferlabError, finetune, load, rundir
from transferlab.config import make_config
from transferlab.data import cache
from transferlab.data.transforms import Preprocessing
from transferlab.train.loop import TrainingDiverged, TrainingInterrupted

PRE = Preprocessing(crop_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("safety") / "colors", {"train": 4, "val": 2})


def test_a_second_process_is_refused_while_a_run_holds_its_folder(data, tmp_path):
    run = tmp_path / "run"
    with rundir.locked(run):
        proc = run_cli("train", "--data", data, "--model", "mobilenet_v2", "--out", run, "--quiet")
        assert proc.returncode == 2 and f"in use by PID {os.getpid()}" in proc.stderr, proc.stderr
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK]
    assert not run.exists()  # the lock made the folder, and took it away with itself


def test_a_run_failing_before_its_first_checkpoint_leaves_nothing(data, tmp_path, monkeypatch, one_thread):
    from transferlab.train import trainer as train

    def fail(self, model):
        assert (run / rundir.CONFIG).is_file()  # written by now
        raise TransferlabError("something went wrong before the first checkpoint")

    monkeypatch.setattr(train.Trainer, "head_warmup", fail)
    run = tmp_path / "run"
    with pytest.raises(TransferlabError, match="something went wrong"):
        finetune(make_config(data=str(data), model="mobilenet_v2", image_size=64, batch_size=8, epochs=1,
                             out=str(run)), quiet=True)
    assert not run.exists()


@pytest.mark.parametrize("freeze", ["body", "none"])  # the probe, and the head warm-up of a fine-tune
def test_head_divergence_names_probe_lr(data, one_thread, freeze):
    config = make_config(data=str(data), model="mobilenet_v2", image_size=64, batch_size=4, epochs=3, freeze=freeze,
                         probe_lr=1e9)
    with pytest.raises(TrainingDiverged, match="lower probe_lr="):
        finetune(config, quiet=True, force=True)


@pytest.fixture
def damaged(tiny_run, tmp_path):
    """A copy of a finished run whose model file a test changes."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "model.safetensors"):
        (run / name).write_bytes((tiny_run[0] / name).read_bytes())
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    return run, load_file(run / "model.safetensors"), meta


@pytest.mark.parametrize("change, needle", [
    ("shape", "its tensors do not fit mobilenet_v2 with 2 classes"),
    ("classes", "class_names names 3 classes and the head has 2 outputs"),
    ("model", "made for a model this transferlab does not know"),
    ("preprocessing", "not a transferlab model file"),
    ("nan", "non-finite weights"),
])
def test_a_damaged_model_file_is_one_line_everywhere(damaged, change, needle, tiny_run):
    run, state, meta = damaged
    if change == "shape":
        state["classifier.1.weight"] = torch.zeros(2, 7)
    elif change == "classes":
        meta["class_names"] = json.dumps(["a", "b", "c"])
    elif change == "model":
        meta["model"] = "resnet9000"
    elif change == "preprocessing":
        meta["preprocessing"] = json.dumps({"crop_size": 64, "resize_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3})
    else:
        state["classifier.1.weight"] = torch.full_like(state["classifier.1.weight"], float("nan"))
    save_file(state, str(run / "model.safetensors"), metadata=meta)
    with pytest.raises(TransferlabError, match=needle):
        load(run)
    image = next((tiny_run[1] / "val").rglob("*.png"))
    for argv in (["predict", run, image], ["evaluate", run, "--data", tiny_run[1]], ["export", run]):
        proc = run_cli(*argv)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_predict_reports_a_bad_image_as_its_row_and_goes_on(tiny_run, tmp_path):
    folder = tmp_path / "photos"
    good = [make_image(folder / f"{i}.png", (200, 40, 40), seed=i) for i in range(3)]
    (folder / "bad.jpg").write_bytes(b"not a jpeg at all")
    proc = run_cli("predict", tiny_run[0], folder)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 2 and "1 of 4 images could not be read" in proc.stderr
    assert [r["path"] for r in rows] == sorted(str(p) for p in [*good, folder / "bad.jpg"])
    bad = next(r for r in rows if r["path"].endswith("bad.jpg"))
    assert set(bad) == {"path", "error"} and "not an image" in bad["error"]
    assert sum("label" in r for r in rows) == 3
    csv = run_cli("predict", tiny_run[0], folder, "--format", "csv")
    lines = csv.stdout.splitlines()
    assert lines[0].endswith(",error") and len(lines) == 5 and "not an image" in lines[1 + [
        str(p) for p in sorted([*good, folder / "bad.jpg"])].index(str(folder / "bad.jpg"))]


def test_export_onto_a_folder_is_refused_before_exporting(tiny_run, tmp_path):
    (tmp_path / "out").mkdir()
    proc = run_cli("export", tiny_run[0], "--out", tmp_path / "out")
    assert proc.returncode == 2 and "is a folder; give a file name" in proc.stderr, proc.stderr


def test_study_stopped_by_sigterm_exits_143_with_the_resume_hint(monkeypatch, data, tmp_path):
    from transferlab.workflows import study as experiments

    def stopped(*args, **kwargs):
        raise TrainingInterrupted("interrupted by SIGTERM at epoch 1/1 step 1/1; checkpoint saved in x", 15,
                                  tmp_path)

    monkeypatch.setattr(experiments, "finetune", stopped)
    (tmp_path / "one.json").write_text('{"variants": {"finetune": {}}}')
    proc = run_cli("study", "--study", tmp_path / "one.json", "--data", data, "--seeds", "1", "--out",
                   tmp_path / "study", "--quiet")
    assert proc.returncode == 143, proc.stderr
    assert "interrupted by SIGTERM" in proc.stderr and "resume with the same `transferlab study` command" in proc.stderr


def test_cache_key_reads_files_in_blocks(tmp_path, monkeypatch):
    path = make_image(tmp_path / "a.png", (10, 20, 30))
    before = cache.cache_key([path], PRE, False)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a whole file into memory"))
    assert cache.cache_key([path], PRE, False) == before


def test_decode_refuses_a_set_that_cannot_fit_in_memory(tmp_path, monkeypatch):
    paths = [make_image(tmp_path / f"{i}.png", (10, 20, 30), size=(400, 300)) for i in range(3)]
    big = Preprocessing(crop_size=224, resize_size=2000, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert cache.decoded_bytes(paths, big) == 3 * 3 * 2000 * 2666
    monkeypatch.setattr(cache, "available_memory", lambda: 50_000_000)
    with pytest.raises(TransferlabError, match=r"3 images decoded at resize 2000 px need about 0.05 GB .* 0.05 GB are"):
        cache.decode(paths, big, quiet=True, disk=False)


def test_cache_folders_evict_the_least_recently_used(tmp_path, monkeypatch):
    folder = tmp_path / "decoded"
    folder.mkdir()
    for i, name in enumerate(("old", "used", "new")):
        (folder / f"{name}.safetensors").write_bytes(b"0" * 1000)
        os.utime(folder / f"{name}.safetensors", (time.time() - 100 + i, time.time() - 100 + i))
    os.utime(folder / "used.safetensors")  # read recently
    removed = cache.evict(folder, keep=folder / "new.safetensors", limit=2500)
    assert [p.name for p in removed] == ["old.safetensors"]
    monkeypatch.setenv(cache.CACHE_MB_ENV, "0.001")  # 1,000 bytes
    assert cache.cache_limit() == 1000
    monkeypatch.setenv(cache.CACHE_MB_ENV, "lots")
    with pytest.raises(TransferlabError, match="TRANSFERLAB_CACHE_MB=lots"):
        cache.cache_limit()


def test_hotdog_zip_with_a_wrong_sha1_is_named_as_such(tmp_path, monkeypatch):
    from transferlab.data import datasets as D

    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path))
    archive = tmp_path / "downloads" / "hotdog.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"half a download")
    with pytest.raises(TransferlabError, match=r"hotdog.zip is there but its SHA-1 is not .* replace it"):
        D.hotdog_root(url="http://127.0.0.1:9/hotdog.zip")


def test_an_error_after_a_progress_bar_starts_its_own_line(data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "train" / "red" / "zz_cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # decodes last, badly
    proc = run_cli("train", "--data", copy, "--model", "mobilenet_v2", "--image-size", "64", "--out",
                   tmp_path / "run")  # not --quiet: bars
    assert proc.returncode == 2, proc.stderr
    index = proc.stderr.index("transferlab: error: ")
    assert index == 0 or proc.stderr[index - 1] == "\n", repr(proc.stderr[max(0, index - 80):index + 20])


def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch):
    import errno

    from transferlab.train import trainer as train

    real, calls = rundir.write_checkpoint, []

    def fill_up(run_dir, state):
        calls.append(state["epoch"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(run_dir, state)

    monkeypatch.setattr(train.rundir, "write_checkpoint", fill_up)
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--model", "mobilenet_v2", "--image-size", "64", "--batch-size", "8",
                   "--epochs", "3", "--head-warmup-epochs", "0", "--out", run, "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"transferlab: error: --out {run}: cannot write (No space left on device); free space, fix the permissions, "
        f"or choose another --out; the last checkpoint is kept in {run / rundir.CHECKPOINT}"]
    assert torch.load(run / rundir.CHECKPOINT, weights_only=True)["epoch"] == 1  # the last good one


@pytest.mark.slow  # waits out a real download timeout
def test_a_stalled_download_times_out(tmp_path, monkeypatch):
    import socket

    from transferlab import files
    from transferlab.data import datasets as D

    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path))
    monkeypatch.setattr(files, "DOWNLOAD_TIMEOUT", 1.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        start = time.monotonic()
        with pytest.raises(TransferlabError, match="cannot download"):
            D.hotdog_root(url=f"http://127.0.0.1:{silent.getsockname()[1]}/hotdog.zip")
        assert time.monotonic() - start < 30
    finally:
        silent.close()


def test_partial_cache_entries_of_killed_processes_are_removed(tmp_path):
    stale, fresh = tmp_path / ".a.safetensors.x.tmp", tmp_path / ".b.safetensors.y.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * cache.STALE_PARTIAL_S,) * 2)
    cache.evict(tmp_path, limit=10**9)
    assert not stale.exists() and fresh.exists()


def test_evaluate_scores_exactly_the_runs_own_test_split(tmp_path, one_thread, no_run_reports):
    from transferlab.data.datasets import resolve_data

    data = make_folder(tmp_path / "bare", {"train": 8})  # no val/ or test/: the run splits it, with its seed
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--model", "mobilenet_v2", "--seed", "3", "--image-size", "64",
                   "--batch-size", "8", "--epochs", "1", "--head-warmup-epochs", "0", "--out", run,
                   "--quiet").returncode == 0
    metrics = json.loads((run / "metrics.json").read_text())
    own = resolve_data(str(data), seed=3).test_files()
    assert metrics["test_split"]["files"] == own != resolve_data(str(data), seed=0).test_files()
    proc = run_cli("evaluate", run, "--data", data, "--quiet")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == len(own) and report["accuracy"] == pytest.approx(metrics["test_acc"])
    (data / own[0]).unlink()  # the data changed since the run
    proc = run_cli("evaluate", run, "--data", data, "--quiet")
    assert proc.returncode == 2 and "its test split is not the run's" in proc.stderr, proc.stderr
