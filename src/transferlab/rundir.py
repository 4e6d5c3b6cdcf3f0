"""The run directory, in one place: its files, who may write into it, checkpoints and the model file.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one line per
stage: decoding, the body features, the head warm-up, each epoch), ``checkpoint.pt`` (while running),
``model.safetensors`` (from the head warm-up on: the best stage so far, ``final`` once finished)
and, once finished, ``metrics.json``. Every file is written atomically.

:func:`check_run_dir` is the one policy for reusing a directory, used by the API, the
command line and studies alike:

- a finished run (its model file exists) is never trained again unless ``overwrite``;
- ``resume`` continues an unfinished run only with the options it was started with, unless
  ``force``;
- without ``resume``, an interrupted run's checkpoint is never thrown away unless ``overwrite``;
- a folder holding anything else is not a run directory: it is refused unless ``overwrite``
  (which replaces the run's own files and leaves the others);
- one process at a time writes into a run directory (:func:`locked`).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import random
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import NAMED_DATA, RunConfig, upgrade
from .errors import TransferlabError, first_line, opt
from .files import atomic_write, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import torch

    from .data.transforms import Preprocessing
    from .models.model import TransferModel

__all__ = ["WARMUP_STAGE", "stage_name",
           "CONFIG", "HISTORY", "METRICS", "MODEL", "CHECKPOINT", "PREDICTIONS", "REPORT", "RANKING", "RUN_FILES",
           "LOCK", "is_finished", "config_differences", "saved_differences", "check_run_dir", "check_output",
           "resume_config", "save_model", "write_history", "write_metrics", "predictions_csv", "read_predictions",
           "write_checkpoint", "read_checkpoint", "rng_state", "set_rng_state", "position", "finish", "clear",
           "foreign_files", "writing", "locked", "discard_unstarted", "RunDir", "read_json", "REPLACED",
           "restore_replaced", "drop_replaced", "FINAL", "model_stage"]

CONFIG = "config.json"
HISTORY = "metrics.jsonl"
METRICS = "metrics.json"
MODEL = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
PREDICTIONS = "test_predictions.csv"  # the final model on every test image (see evaluation.metrics.prediction_rows)
REPORT = "report.html"
RANKING = "rank.json"  # --model auto: the ranking that picked the model (see transferlab.ranking.ranker)
LOCK = ".lock"
REPLACED = ".replaced"  # --overwrite: the run being replaced, until the new one has its first checkpoint
# a run's own files; nothing else may write them
RUN_FILES = (MODEL, METRICS, CHECKPOINT, HISTORY, CONFIG, PREDICTIONS, REPORT, RANKING)


FINAL = "final"  # the stage of a finished run's model (an unfinished run's is "head warm-up" or "epoch N")
WARMUP_STAGE = "head warm-up"  # the first model a run saves: the pretrained body and the fitted head


def stage_name(epoch: int) -> str:
    """The stage of a run's model after ``epoch`` epochs: ``head warm-up`` (0), ``epoch N``."""
    return WARMUP_STAGE if epoch == 0 else f"epoch {epoch}"


def model_stage(run_dir: str | Path) -> str | None:
    """The stage the run's model file comes from (``final`` for runs older than stages), or None: no model."""
    if not (Path(run_dir) / MODEL).is_file():
        return None
    return RunDir(Path(run_dir)).model_metadata().get("stage", FINAL)


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished when its final model file is there (``metrics.json`` is written with it); the model an
    unfinished run saves at each better stage (the head warm-up, an epoch) is usable, but not the end."""
    return model_stage(run_dir) == FINAL


def config_differences(saved: dict[str, Any], config: RunConfig) -> list[str]:
    """``key: saved -> new`` for every option (but ``out``) in which ``config`` differs from a saved config.

    Keys newer than the saved file count with their defaults.
    """
    expected = json.loads(json.dumps(config.to_dict()))
    saved = {**json.loads(json.dumps(RunConfig().to_dict())), **saved}
    return [f"{k}: {saved[k]!r} -> {v!r}" for k, v in expected.items() if k != "out" and saved.get(k) != v]


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise TransferlabError(f"{path}: cannot read run config ({first_line(exc, 200)}); delete it or choose another "
                               f"{opt('out')}") from None
    if not isinstance(values, dict):
        raise TransferlabError(f"{path}: not a run config; delete it or choose another {opt('out')}")
    return upgrade(values)


def saved_differences(run_dir: Path, config: RunConfig) -> list[str]:
    """How ``config`` differs from the config saved in ``run_dir`` (nothing when none is saved)."""
    saved = _saved_config(run_dir)
    return config_differences(saved, config) if saved is not None else []


def check_run_dir(run_dir: str | Path, config: RunConfig, resume: bool = False, force: bool = False,
                  overwrite: bool = False) -> None:
    """Refuse, with one line, to start ``config`` in ``run_dir`` where that would lose or mix up a run."""
    run_dir = Path(run_dir)
    holds = RunDir(run_dir).holds_run()
    # files named like a run's are no run unless they read as one; other files are never a run's
    shown = sorted(foreign_files(run_dir) + ([] if holds else [n for n in RUN_FILES if (run_dir / n).exists()]))
    if shown and (not holds or not overwrite):  # --overwrite replaces a run, beside the user's other files
        shown_text = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        raise TransferlabError(f"{opt('out', run_dir)}: not empty and not a run ({shown_text}); choose a new or empty "
                               f"folder ({opt('overwrite')} replaces only a run, and nothing else in its folder)")
    if is_finished(run_dir) and not overwrite:
        raise TransferlabError(f"{opt('out', run_dir)}: a finished run is already there ({MODEL}); choose another "
                               f"{opt('out')}, or pass {opt('overwrite')} to train it again")
    if overwrite:
        return
    if not resume and ((run_dir / CHECKPOINT).is_file() or (run_dir / MODEL).is_file()):
        found = CHECKPOINT if (run_dir / CHECKPOINT).is_file() else f"{MODEL} of its {model_stage(run_dir)}"
        raise TransferlabError(f"{opt('out', run_dir)}: an interrupted run is there ({found}); pass "
                               f"{opt('resume')} to continue it, or {opt('overwrite')} to start over")
    if resume and not force:
        diff = saved_differences(run_dir, config)
        if diff:
            raise TransferlabError(f"{opt('resume')}: options differ from {run_dir / CONFIG} ({'; '.join(diff)}); "
                                   f"drop them, or pass {opt('force')} to accept")


def resume_config(run_dir: str | Path, overrides: dict[str, Any]) -> RunConfig:
    """The saved config of ``run_dir`` with ``overrides`` on top (what a resume on the command line runs)."""
    run_dir = Path(run_dir)
    saved = _saved_config(run_dir)
    if saved is None:
        raise TransferlabError(f"{opt('resume')}: no run to resume in {run_dir} (no {CONFIG}); check "
                               f"{opt('out')}, or give {opt('data')} to start a new run there")
    path = run_dir / CONFIG
    try:
        saved_config = RunConfig.from_dict(saved, source=str(path)).validate(force=True)
    except TransferlabError as exc:
        said = exc.raw if exc.raw.startswith(f"{path}: ") else f"{path}: {exc.raw}"
        raise TransferlabError(f"{said}; fix the file, or start a new run elsewhere") from None
    return RunConfig.from_dict({**saved_config.to_dict(), **overrides, "out": str(run_dir)}).validate(force=True)


# --------------------------------------------------------------------------- files


def save_model(model: TransferModel, path: Path, classes: Sequence[str], pre: Preprocessing,
               config: RunConfig, stage: str = FINAL) -> Path:
    """``model.safetensors``: torchvision state-dict keys; class names, preprocessing and the run's stage the
    weights come from (``final``, or ``head warm-up`` / ``epoch N`` while the run goes on) in metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    metadata = {"class_names": json.dumps(list(classes)), "model": model.model_name,
                "preprocessing": json.dumps(pre.to_dict()), "head": model.head_name,
                "config": json.dumps(config.to_dict()), "stage": stage}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def write_history(run_dir: Path, history: Sequence[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(run_dir / HISTORY, lambda tmp: Path(tmp).write_text(lines))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    atomic_write_json(run_dir / METRICS, metrics)


def check_output(run_dir: str | Path, path: str | Path, option: str, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse to write an output (export, predictions) onto a folder, onto one of a run's own files (this run's
    or any other's), or onto one of the command's ``inputs``."""
    path = Path(path)
    if path.is_dir():
        raise TransferlabError(f"{opt(option, path)}: is a folder; give a file name")
    target = path.resolve()
    if target in {(Path(run_dir) / name).resolve() for name in RUN_FILES}:
        raise TransferlabError(f"{opt(option, path)}: {path.name} is one of the run's own files; write elsewhere")
    if target.name in RUN_FILES and RunDir(target.parent).holds_run():
        raise TransferlabError(f"{opt(option, path)}: {path.name} is one of the files of the run in {target.parent}; "
                               "write elsewhere")
    if target in {Path(item).resolve() for item in inputs}:
        raise TransferlabError(f"{opt(option, path)}: is one of the inputs; write elsewhere")


def finish(run_dir: Path, model: TransferModel, classes: Sequence[str], pre: Preprocessing, config: RunConfig,
           metrics: dict[str, Any], predictions: Sequence[dict[str, Any]] = ()) -> None:
    """Write the model file, the test predictions and the final metrics, then drop the checkpoint."""
    save_model(model, run_dir / MODEL, classes, pre, config)
    if predictions:
        atomic_write_text(run_dir / PREDICTIONS, predictions_csv(predictions, classes))
    write_metrics(run_dir, metrics)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    drop_replaced(run_dir)


def write_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """``checkpoint.pt``; the previous one stays in place until the new one is complete."""
    import torch

    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))
    drop_replaced(run_dir)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents (``weights_only``), or one line saying it cannot be used."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "optimizer", "scheduler", "epoch", "history", "elapsed"):
            state[key]  # noqa: B018 - a KeyError names the missing entry
    except Exception as exc:  # noqa: BLE001
        reason = first_line(exc, 200)  # an empty file: EOFError()
        if "weights_only" in str(exc) or "Weights only" in str(exc):  # never pass on torch's advice to unpickle
            reason = "it is truncated, or holds pickled objects besides tensors, which are never loaded"
        raise TransferlabError(f"{path}: cannot resume from this checkpoint ({reason}); "
                               "delete it to start over") from None
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator a process may draw from (torch, CUDA, numpy, python), as checkpointable values."""
    import torch

    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def position(epoch: int, step: int) -> str:
    """Where a checkpoint stands: ``epoch`` whole epochs done, then ``step`` steps of the next."""
    return f"epoch {epoch + 1} step {step}" if step else f"end of epoch {epoch}"


def clear(run_dir: Path) -> None:
    """Set a run's own files aside (into ``RUN/.replaced``) before it is trained again (``--overwrite``).

    They stay there until the new run writes its first checkpoint (:func:`write_checkpoint`), and come
    back if it fails before that (:func:`discard_unstarted`): the old model is never lost for nothing.
    """
    aside = run_dir / REPLACED
    if aside.is_dir():  # an earlier replacement that never reached its first checkpoint: the old run is there
        restore_replaced(run_dir)
    names = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not names:
        return
    aside.mkdir()
    for name in names:
        os.replace(run_dir / name, aside / name)


def restore_replaced(run_dir: Path) -> None:
    """Put the files of a run set aside by :func:`clear` back, over what the failed replacement wrote."""
    aside = run_dir / REPLACED
    if not aside.is_dir():
        return
    for name in RUN_FILES:
        if (aside / name).exists():
            os.replace(aside / name, run_dir / name)
        else:
            (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(aside, ignore_errors=True)


def drop_replaced(run_dir: Path) -> None:
    """The replacement has its first checkpoint: the run it replaces goes."""
    aside = run_dir / REPLACED
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)


def foreign_files(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that no run writes (a run directory holds one run and nothing else)."""
    if not run_dir.is_dir():
        return []
    return sorted(name for name in os.listdir(run_dir) if name not in RUN_FILES and name not in (LOCK, REPLACED)
                  and not (name.startswith(".") and name.endswith(".tmp")))


@contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Turn a failed write into the run directory (read-only, disk full) into one line."""
    try:
        yield
    except OSError as exc:
        kept = f"; the last checkpoint is kept in {run_dir / CHECKPOINT}" if (run_dir / CHECKPOINT).is_file() else ""
        raise TransferlabError(f"{opt('out', run_dir)}: cannot write ({exc.strerror or exc}); free space, fix the "
                               f"permissions, or choose another {opt('out')}{kept}") from None


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` (an exclusive ``flock``) while a run, study variant or export writes into ``run_dir``.

    A second process is refused with the holder's PID. The lock file is removed on release
    (the inode is checked after locking, so a process that opened a removed file tries again).
    """
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferlabError(f"{opt('out', run_dir)}: cannot create it ({exc.strerror or exc}); choose another "
                               f"{opt('out')}") from None
    path = run_dir / LOCK
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise TransferlabError(f"{opt('out', run_dir)}: in use by PID {holder} (another transferlab process); "
                                   f"wait for it, or choose another {opt('out')}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        if created:
            try:
                run_dir.rmdir()  # only if the run left nothing
            except OSError:
                pass


def _open_lock(path: Path) -> int:
    """Open (or create) a lock file: a regular file, never through a symbolic link."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TransferlabError(f"{path}: is a symbolic link, not transferlab's lock; remove it") from None
        raise TransferlabError(f"{path}: cannot open the run's lock ({exc.strerror or exc}); fix the permissions, "
                               f"or choose another {opt('out')}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TransferlabError(f"{path}: is not a regular file, not transferlab's lock; remove it")
    return fd


def discard_unstarted(run_dir: Path) -> None:
    """Remove what a run that failed before its first checkpoint wrote (it cannot be resumed); a run it was
    replacing (``--overwrite``) comes back."""
    if (run_dir / REPLACED).is_dir():
        restore_replaced(run_dir)
        return
    if (run_dir / CHECKPOINT).exists() or is_finished(run_dir):
        return
    for name in (CONFIG, HISTORY, RANKING):
        (run_dir / name).unlink(missing_ok=True)


def predictions_csv(rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> str:
    """``rows`` of :func:`prediction_rows` as CSV text (the header names every class)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["path", "label", "predicted", "correct", *[f"prob_{c}" for c in classes]],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by :func:`predictions_csv`, numbers parsed."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["correct"] = int(row["correct"])
        for key in row:
            if key.startswith("prob_"):
                row[key] = float(row[key])
    return rows


def read_json(path: Path) -> Any:
    """A JSON file's content, or None where it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class RunDir:
    """One run directory, read back: the one reader of the files a run writes.

    Each reader gives None (or ``[]``, ``{}``) where its file is missing or unreadable, so a report or a
    study can describe an unfinished or older run; what must exist is checked by the caller.
    """

    path: Path

    def config_dict(self) -> dict[str, Any] | None:
        """``config.json`` as saved (a dict), or None."""
        values = read_json(self.path / CONFIG)
        return values if isinstance(values, dict) else None

    def config(self) -> RunConfig:
        """The run's config (today's defaults for the keys an older run did not write)."""
        return RunConfig.load(self.path / CONFIG) if (self.path / CONFIG).is_file() else RunConfig()

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` (a finished run's final metrics), or None."""
        values = read_json(self.path / METRICS)
        return values if isinstance(values, dict) else None

    def stages(self) -> list[dict[str, Any]]:
        """``metrics.jsonl``: a row per stage so far, each with wall_s (``decode``, ``features``, ``head_warmup``,
        then one per epoch)."""
        try:
            rows = [json.loads(line) for line in (self.path / HISTORY).read_text().splitlines() if line.strip()]
        except (OSError, ValueError, RecursionError):
            return []
        return [r for r in rows if isinstance(r, dict)]

    def history(self) -> list[dict[str, Any]]:
        """The epoch rows of ``metrics.jsonl``, one per epoch so far."""
        return [r for r in self.stages() if "epoch" in r]

    def predictions(self) -> list[dict[str, Any]] | None:
        """``test_predictions.csv`` rows (:func:`read_predictions`), or None (runs older than the file)."""
        try:
            return read_predictions(self.path / PREDICTIONS)
        except (OSError, ValueError, KeyError, TypeError, csv.Error):
            return None

    def ranking(self) -> dict[str, Any] | None:
        """``rank.json`` of a ``--model auto`` run, or None."""
        values = read_json(self.path / RANKING)
        return values if isinstance(values, dict) else None

    def model_metadata(self) -> dict[str, str]:
        """The model file's metadata (class names, preprocessing, model, config), without loading its tensors."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path / MODEL), "np") as fh:
                return dict(fh.metadata() or {})
        except Exception:  # noqa: BLE001 - a missing or damaged file has no metadata
            return {}

    def holds_run(self) -> bool:
        """Whether the folder's files are a run's: a ``config.json`` that reads as a run config, or a model
        file with a run's metadata (a user's own ``config.json`` or ``report.html`` is not a run)."""
        values = self.config_dict()
        if values is not None and {"data", "model"} <= values.keys():
            try:
                RunConfig.from_dict(upgrade(dict(values)))
                return True
            except Exception:  # noqa: BLE001 - not a run config
                pass
        return {"class_names", "preprocessing", "model"} <= self.model_metadata().keys()

    def data(self) -> str:
        """The data the run was trained on, found again: its ``data`` as given (a named set, or a folder that is
        still there from here), else the folder it resolved to (``metrics.json``'s ``data_root``)."""
        spec = self.config().data
        if spec in NAMED_DATA or Path(spec).is_dir():
            return spec
        root = (self.metrics() or {}).get("data_root")
        if isinstance(root, str) and Path(root).is_dir():
            return root
        raise TransferlabError(f"{self.path}: the run's data {spec!r} is not there from here; give "
                               f"{opt('data')} DIR")

    def test_split(self) -> tuple[int, float, list[str] | None]:
        """The seed and test fraction the run split its data with, and its recorded test files (None: not recorded)."""
        config = self.config()
        split = (self.metrics() or {}).get("test_split")
        files = split.get("files") if isinstance(split, dict) else None
        return config.seed, config.test_fraction, files
