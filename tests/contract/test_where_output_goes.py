"""Where output goes: no command modifies or deletes what the user wrote (a run that ``--overwrite`` names is
replaced only once its replacement exists)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_image, run_cli

from transferlab import rundir
from transferlab.train.trainer import Trainer

MODEL = ("--model", "mobilenet_v2")  # named: the default, auto, ranks the backbones before a run
TINY = (*MODEL, "--image-size", 32, "--batch-size", 4, "--epochs", 1, "--quiet")


def _copy_run(tiny_run, tmp_path: Path, name: str = "run") -> Path:
    copy = tmp_path / name
    shutil.copytree(tiny_run[0], copy)
    return copy


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_clear_deletes_only_what_transferlab_wrote(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TRANSFERLAB_HOME", str(home))
    users = {home / "datasets" / "mine" / "photo.jpg": b"mine", home / "downloads" / "notes.txt": b"notes",
             home / "decoded" / "keep.txt": b"keep", home / "datasets" / "hotdog" / "a.jpg": b"no marker: not ours"}
    for path, data in users.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    ours = [home / "decoded" / f"{'a' * 32}.safetensors", home / "features" / f"{'b' * 32}.safetensors",
            home / "downloads" / "hotdog.zip", home / "datasets" / "elpv" / "train" / "x.png"]
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 10)
    (home / "datasets" / "elpv" / ".transferlab-made").touch()

    proc = run_cli("cache", "--clear")
    assert proc.returncode == 0, proc.stderr
    assert all(path.read_bytes() == data for path, data in users.items())
    assert not any(path.exists() for path in ours)
    assert "kept 2 entries transferlab did not write" in proc.stdout  # datasets: mine, hotdog


@pytest.mark.parametrize("name", ["config.json", "report.html", "metrics.json", "test_predictions.csv", "rank.json"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_the_users_files_named_like_a_runs_is_not_a_run(image_folder, tmp_path, name, overwrite):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text('{"title": "my own notes"}\n')
    before = _snapshot(out)
    proc = run_cli("train", "--data", image_folder, "--out", out, *TINY, *(["--overwrite"] if overwrite else []))
    assert proc.returncode == 2
    assert f"not empty and not a run ({name})" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _snapshot(out) == before


def test_overwrite_refuses_a_folder_of_other_files(image_folder, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = run_cli("train", "--data", image_folder, "--out", out, *TINY, "--overwrite")
    assert proc.returncode == 2 and "not empty and not a run (notes.txt)" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tiny_run, tmp_path, monkeypatch):
    run = _copy_run(tiny_run, tmp_path)
    data = tiny_run[1]
    before = _snapshot(run)

    def fail(self, model):  # after the old files were set aside, before the first checkpoint
        from transferlab.errors import TransferlabError

        raise TransferlabError("the new run failed before its first checkpoint")

    monkeypatch.setattr(Trainer, "head_warmup", fail)
    proc = run_cli("train", "--data", data, "--out", run, *MODEL, "--image-size", 64, "--batch-size", 8, "--epochs", 1,
                   "--quiet", "--overwrite")
    assert proc.returncode == 2 and "failed before its first checkpoint" in proc.stderr
    assert _snapshot(run) == before  # the old model, metrics and report, byte for byte
    assert not (run / rundir.REPLACED).exists()

    monkeypatch.undo()
    proc = run_cli("train", "--data", data, "--out", run, *MODEL, "--image-size", 64, "--batch-size", 8, "--epochs", 1,
                   "--quiet", "--overwrite", "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / rundir.CONFIG).read_text())["seed"] == 1 and rundir.is_finished(run)
    assert not (run / rundir.REPLACED).exists()


def test_a_lock_that_is_a_symbolic_link_is_refused(image_folder, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim, out / rundir.LOCK)
    proc = run_cli("train", "--data", image_folder, "--out", out, *TINY)
    assert proc.returncode == 2 and "is a symbolic link, not transferlab's lock" in proc.stderr
    assert victim.read_text() == "precious"


def test_study_out_is_never_a_run_or_a_folder_of_the_users_files(tiny_run, image_folder, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my report")
    proc = run_cli("study", "--data", image_folder, "--out", mine, *TINY)
    assert proc.returncode == 2 and "not empty and not a study (report.md)" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["report.md"]
    run = _copy_run(tiny_run, tmp_path)
    before = _snapshot(run)
    proc = run_cli("study", "--data", image_folder, "--out", run, *TINY)
    assert proc.returncode == 2 and "holds a run, not a study" in proc.stderr
    assert _snapshot(run) == before


def test_report_writes_only_into_a_run(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"theme": "dark"}')
    proc = run_cli("report", mine)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["config.json"]


def test_outputs_never_land_on_another_runs_files_an_input_or_a_foreign_sidecar(tiny_run, tmp_path):
    run, _ = tiny_run
    other = _copy_run(tiny_run, tmp_path, "other")
    before = _snapshot(other)
    for out in (other / rundir.MODEL, other / "config.ts"):  # config.ts: its sidecar would be other/config.json
        proc = run_cli("export", run, "--format", "torchscript", "--out", out)
        assert proc.returncode == 2 and "files of the run in" in proc.stderr, proc.stderr
    proc = run_cli("predict", run, tmp_path / "x.png", "--out", other / rundir.MODEL)
    assert proc.returncode == 2
    assert _snapshot(other) == before

    photo = make_image(tmp_path / "photos" / "a.png", (200, 40, 40))
    data = photo.read_bytes()
    proc = run_cli("predict", run, tmp_path / "photos", "--out", photo)
    assert proc.returncode == 2 and "is one of the inputs" in proc.stderr
    assert photo.read_bytes() == data

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "my-app"}')
    proc = run_cli("export", run, "--format", "torchscript", "--out", app / "package.ts")
    assert proc.returncode == 2 and "is not the metadata of an export" in proc.stderr
    assert (app / "package.json").read_text() == '{"name": "my-app"}' and not (app / "package.ts").exists()


@pytest.mark.parametrize("args, gist", [
    (("--batch-size", "99999999999999999999"), "--batch-size 99999999999999999999: over 1,048,576"),
    (("--epochs", str(10**20)), "--epochs 100000000000000000000: over 100,000"),
    (("--head-warmup-epochs", str(10**20)), "--head-warmup-epochs 100000000000000000000: over 100,000"),
    (("--probe-views", str(10**20)), "--probe-views 100000000000000000000: over 1,000"),
    (("--warmup-epochs", "-5"), "--warmup-epochs must not be negative"),
])
def test_counts_no_run_can_use_are_one_line(image_folder, tmp_path, args, gist):
    proc = run_cli("train", "--data", image_folder, "--out", tmp_path / "run", *MODEL, *args)
    assert proc.returncode == 2 and gist in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_config_nested_beyond_recursion_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("[" * 100_000 + "]" * 100_000)
    proc = run_cli("train", "--out", run, "--resume")
    assert proc.returncode == 2 and "cannot read run config" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rank_checks_its_output_before_ranking(image_folder, tmp_path):
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    proc = run_cli("rank", "--data", image_folder, "--out", taken)
    assert proc.returncode == 2 and "is a file; give a folder for rank.json" in proc.stderr
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / rundir.RANKING).write_text('{"my": "notes"}')
    proc = run_cli("rank", "--data", image_folder, "--out", folder)
    assert proc.returncode == 2 and "is not a ranking of transferlab" in proc.stderr
    assert (folder / rundir.RANKING).read_text() == '{"my": "notes"}'


@pytest.mark.parametrize("value", ["inf", "nan", "0", "1e9"])
def test_serve_refuses_an_upload_limit_it_cannot_keep(tiny_run, value):
    proc = run_cli("serve", tiny_run[0], "--max-upload-mb", value)
    assert proc.returncode == 2 and "--max-upload-mb must be a positive number of megabytes" in proc.stderr


def test_one_class_is_refused_at_training_and_a_val_file_is_not_ignored(tmp_path):
    from conftest import make_folder

    one = make_folder(tmp_path / "one", {"train": 3, "val": 2}, classes={"red": (200, 40, 40)})
    proc = run_cli("train", "--data", one, "--out", tmp_path / "run1", *TINY)
    assert proc.returncode == 2 and "only one class (red)" in proc.stderr
    data = make_folder(tmp_path / "two", {"train": 3})
    (data / "val").write_text("not a folder")
    proc = run_cli("train", "--data", data, "--out", tmp_path / "run2", *TINY)
    assert proc.returncode == 2 and "val is a file, not a folder of class folders" in proc.stderr
    proc = run_cli("train", "--data", data / "val", "--out", tmp_path / "run3", *TINY)
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr


def test_serve_host_is_checked_and_every_127_address_is_loopback(tiny_run):
    from transferlab.inference.serve import is_loopback

    proc = run_cli("serve", tiny_run[0], "--host", "")
    assert proc.returncode == 2 and "--host: empty" in proc.stderr
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_resume_with_overwrite_and_a_head_map_without_its_head_are_refused(image_folder, tmp_path):
    proc = run_cli("train", "--data", image_folder, "--out", tmp_path / "run", *TINY, "--resume", "--overwrite")
    assert proc.returncode == 2 and "--resume and --overwrite: choose one" in proc.stderr
    from transferlab.config import make_config
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError, match="head_map= maps ImageNet rows to classes: it needs head_init="):
        make_config(data=str(image_folder), head_map={"red": [1]}).validate()


@pytest.mark.parametrize("cut", [0, 200])
def test_a_truncated_or_pickled_checkpoint_never_suggests_unpickling(tiny_run, tmp_path, cut):
    from fractions import Fraction

    import torch

    run = _copy_run(tiny_run, tmp_path)
    (run / rundir.MODEL).unlink()
    (run / "metrics.json").unlink()
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1, "note": Fraction(1, 3)}, run / "full.pt")
    data = (run / "full.pt").read_bytes()
    (run / rundir.CHECKPOINT).write_bytes(data[:len(data) - cut])
    (run / "full.pt").unlink()
    proc = run_cli("train", "--out", run, "--resume", "--quiet")
    assert proc.returncode == 2 and "cannot resume from this checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_no_line_a_run_prints_carries_a_control_byte(image_folder, tmp_path):
    proc = run_cli("train", "--data", image_folder, "--out", tmp_path / "run", *MODEL, "--image-size", 32,
                   "--batch-size", 4, "--epochs", 1, "--head-warmup-epochs", 1)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert "keeping the last epoch (no selection; --select-metric or --early-stopping choose" in text
    assert not [c for c in text if ord(c) < 32 and c not in "\n\t"], repr(text[:300])


@pytest.mark.parametrize("edit, gist", [
    ({"preprocessing": {"mean": "abc"}}, "is not usable"),
    ({"preprocessing": {"crop_size": 4096, "resize_size": 4096}}, "is not usable"),
    ({"class_names": ["a", "b", "c"]}, "class_names names 3 classes and the head has 2 outputs"),
    ({"class_names": [f"c{i}" for i in range(100_001)]}, "class_names names 100001 classes"),
])
def test_model_metadata_is_checked_against_its_tensors_before_anything_is_allocated(tiny_run, tmp_path, edit, gist):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = _copy_run(tiny_run, tmp_path)
    with safe_open(str(run / rundir.MODEL), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    if "preprocessing" in edit:
        meta["preprocessing"] = json.dumps({**json.loads(meta["preprocessing"]), **edit["preprocessing"]})
    else:
        meta["class_names"] = json.dumps(edit["class_names"])
    save_file(tensors, run / rundir.MODEL, metadata=meta)
    image = make_image(tmp_path / "x.png", (200, 40, 40))
    for args in (("predict", run, image), ("export", run, "--format", "torchscript", "--out", tmp_path / "m.ts")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and gist in proc.stderr and "not a transferlab model file" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_strip_image_is_refused_before_it_is_resized(tiny_run, tmp_path):
    from PIL import Image

    strip = tmp_path / "strip.png"
    Image.new("RGB", (300_000, 1)).save(strip)
    assert strip.stat().st_size < 5_000
    proc = run_cli("predict", tiny_run[0], strip)
    assert proc.returncode == 2 and "longer than 50:1" in proc.stdout + proc.stderr


@pytest.mark.parametrize("version", [1, 2])
def test_the_memory_check_reads_the_containers_limit(tmp_path, version):
    from transferlab.data.cache import available_memory, cgroup_headroom

    root = tmp_path / "cgroup"
    if version == 2:
        job = root / "kubepods" / "pod1"
        job.mkdir(parents=True)
        (job / "memory.max").write_text(f"{512 << 20}\n")
        (job / "memory.current").write_text(f"{112 << 20}\n")
        (root / "kubepods" / "memory.max").write_text("max\n")
        own = "0::/kubepods/pod1\n"
    else:
        job = root / "memory" / "docker" / "abc"
        job.mkdir(parents=True)
        (job / "memory.limit_in_bytes").write_text(f"{512 << 20}\n")
        (job / "memory.usage_in_bytes").write_text(f"{112 << 20}\n")
        own = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n"
    (tmp_path / "self").write_text(own)
    assert cgroup_headroom(root, tmp_path / "self") == 400 << 20
    assert available_memory(root, tmp_path / "self") == 400 << 20  # less than the machine's
    (tmp_path / "none").write_text("0::/\n")
    assert cgroup_headroom(root, tmp_path / "none") is None


def test_nproc_checks_its_data_and_the_cores_before_starting_a_process(image_folder, tmp_path, monkeypatch):
    import transferlab.train.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("processes were started"))
    proc = run_cli("train", "--nproc", 2, "--data", tmp_path / "nope", "--out", tmp_path / "run", "--quiet")
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = run_cli("train", "--nproc", (os.cpu_count() or 1) + 1, "--data", image_folder, "--out", tmp_path / "run",
                   "--batch-size", 64, "--quiet")
    assert proc.returncode == 2 and "more processes than the" in proc.stderr


def test_a_full_disk_is_one_line_from_any_writer_and_the_old_file_stays(tmp_path):
    from transferlab.errors import TransferlabError
    from transferlab.files import atomic_write, atomic_write_text

    target = atomic_write_text(tmp_path / "kept.txt", "old")

    def full(tmp: str) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")

    with pytest.raises(OSError) as info:  # still an OSError for code that handles those
        atomic_write(target, full)
    assert isinstance(info.value, TransferlabError) and "cannot write" in str(info.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.txt"]

    def safetensors_full(tmp: str) -> None:
        raise Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
                        "on device\" })")

    with pytest.raises(TransferlabError, match="cannot write"):
        atomic_write(target, safetensors_full)

    def bug(tmp: str) -> None:
        raise ValueError("a writer's own bug")

    with pytest.raises(ValueError, match="own bug"):  # not a full disk: it stays what it is
        atomic_write(target, bug)


def test_outputs_into_a_folder_that_cannot_be_written_are_one_line(tiny_run, tmp_path, monkeypatch):
    import tempfile

    run, _ = tiny_run

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    image = make_image(tmp_path / "x.png", (200, 40, 40))
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # rank checks before its minutes of work
    for args in (("export", run, "--format", "torchscript", "--out", tmp_path / "ro" / "m.ts"),
                 ("predict", run, image, "--out", tmp_path / "ro" / "rows.json"),
                 ("report", _copy_run(tiny_run, tmp_path)),
                 ("rank", "--data", tiny_run[1], "--out", tmp_path / "ro" / "rank")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "cannot write (Permission denied)" in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, gist", [
    (("--head-lr-mult", "1e9"), "--head-lr-mult 1000000000.0: above 1000"),
    (("--weight-decay", "1e9"), "--weight-decay 1000000000.0: above 1"),
    (("--momentum", "1e9"), "--momentum 1000000000.0: must be below 1"),
])
def test_advice_names_the_option_at_fault(image_folder, tmp_path, args, gist):
    proc = run_cli("train", "--data", image_folder, "--out", tmp_path / "run", *TINY, *args)
    assert proc.returncode == 2 and gist in proc.stderr and "--lr" not in proc.stderr.replace("--lr-", "")
    assert "--probe-lr" not in proc.stderr


@pytest.mark.parametrize("file, key, value", [("metrics.json", "class_names", 5),
                                              ("metrics.json", "confusion", "x"),
                                              ("config.json", "crop_scale", [0.5])])
def test_hand_edited_run_files_are_one_line_in_report_and_resume(tiny_run, tmp_path, file, key, value):
    run = _copy_run(tiny_run, tmp_path)
    values = json.loads((run / file).read_text())
    values[key] = value
    (run / file).write_text(json.dumps(values))
    (run / rundir.REPORT).unlink()
    proc = run_cli("report", run)
    assert proc.returncode in (0, 2), proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 1 and "Traceback" not in proc.stderr
    if file == "config.json":
        (run / rundir.MODEL).unlink()
        (run / rundir.CHECKPOINT).write_bytes(b"")
        proc = run_cli("train", "--out", run, "--resume", "--quiet")
        assert proc.returncode == 2 and "--crop-scale must be two numbers, got [0.5]; fix the file" in proc.stderr


def test_export_elsewhere_only_reads_the_run(tiny_run, tmp_path, monkeypatch):
    """A run on a read-only mount exports to a folder of the user's (no RUN/.lock is needed to read it)."""
    import errno

    run = _copy_run(tiny_run, tmp_path)
    real_open = os.open

    def read_only_run(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)).absolute().is_relative_to(run) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_run)
    before = _snapshot(run)
    proc = run_cli("export", run, "--format", "torchscript", "--out", tmp_path / "app" / "model.ts")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "app" / "model.ts").stat().st_size > 0 and _snapshot(run) == before
    proc = run_cli("export", run, "--format", "torchscript")  # into the run itself: one line, nothing written
    assert proc.returncode == 2 and "Read-only file system" in proc.stderr and _snapshot(run) == before, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
