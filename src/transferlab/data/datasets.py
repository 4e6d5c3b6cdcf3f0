"""Datasets: ImageFolder trees, the built-in ``elpv`` and ``hotdog`` sets, splits and decoding."""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import NAMED_DATA, RunConfig
from ..errors import TransferlabError, opt
from ..files import MADE_HERE, cache_dir, download_timeout, file_digest
from .images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, load_rgb, max_pixels, to_tensor
from .transforms import decode_one

__all__ = ["IMAGE_EXTENSIONS", "IGNORED_NAMES", "DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "Split", "Dataset",
           "resolve_data", "dataset_for", "scan_folder", "image_files", "stratified_split", "split_difference",
           "max_pixels", "load_rgb", "to_tensor", "decode_one", "elpv_root", "hotdog_root", "safe_extract",
           "HOTDOG_URL", "HOTDOG_SHA1"]

log = logging.getLogger(__name__)

# Photo formats Pillow reads (AVIF since Pillow 11.3); other files in a class folder are counted and reported.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff", ".avif", ".ico", ".qoi", ".tga", ".pnm", ".ppm", ".pgm", ".pbm"})
# Photo formats transferlab cannot read here: reported when found, so they are not dropped silently.
UNREAD_PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2",
                                     ".raf", ".raw", ".svg", ".jp2", ".j2k", ".psd", ".eps", ".pdf"})
MAX_EXTRACT_BYTES = 4 << 30  # the most a dataset archive may unpack to
MAX_EXTRACT_RATIO = 100  # and at most this many times its own size (a zip bomb is far above)
# Skipped while scanning, like every name that starts with "." (.DS_Store, ._x.jpg, .ipynb_checkpoints).
IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})
HOTDOG_URL = "http://d2l-data.s3-accelerate.amazonaws.com/hotdog.zip"
HOTDOG_SHA1 = "fba480ffa8aa7e0febbb511d181409f899b9baa5"


@dataclass(frozen=True)
class Split:
    """Image paths with integer labels."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> Split:
        return Split(tuple(self.paths[i] for i in indices), tuple(self.labels[i] for i in indices))

    def __repr__(self) -> str:
        return f"Split({len(self)} images)"


@dataclass(frozen=True)
class Dataset:
    """Train, test and (optionally) validation splits over the same class names.

    ``test_source`` says where the test split comes from: ``test`` or ``val`` (that folder)
    or ``split`` (carved from a bare class-folder tree); ``val_source`` likewise ``val``
    (a tree with train/, val/ and test/), ``carved`` (from train) or None (no validation).
    """

    name: str
    root: Path
    classes: tuple[str, ...]
    train: Split
    test: Split
    test_source: str
    val: Split | None = None
    val_source: str | None = None

    def __repr__(self) -> str:
        return f"Dataset({self.describe()}; root {self.root})"

    def describe(self) -> str:
        """One line (a run's first): the classes, and each split's role, where it comes from and its size.

        A tree of train/ and val/ is tested on val/ (where timm and Hugging Face read it as validation);
        the line says so.
        """
        train, test = len(self.train), len(self.test)
        scored = ("scored once, on the final model" if self.val is not None else
                  "scored after each epoch; no choice is made on it")
        if self.test_source == "split":
            roles = f"class folders: {train} images for training, {test} split off as the test split ({scored})"
        else:
            roles = (f"train/ for training ({train} images), {self.test_source}/ as the test split ({test} images, "
                     f"{scored})")
        origin = "train/" if self.test_source != "split" else "the training images"
        val = ("no validation split" if self.val is None else
               f"validation: {len(self.val)} images carved from {origin}" if self.val_source == "carved" else
               f"{self.val_source}/ as validation ({len(self.val)} images)")
        return f"{self.name}: {len(self.classes)} classes ({', '.join(self.classes)}); {roles}; {val}"

    def with_validation(self, fraction: float, seed: int) -> Dataset:
        """This dataset with ``fraction`` of train carved off (stratified, seeded) as validation.

        A dataset that has a validation split already (``val/`` beside ``test/``) keeps it; a
        fraction of 0 changes nothing.
        """
        if self.val is not None or not fraction:
            return self
        small = [c for c, n in zip(self.classes, np.bincount(self.train.labels, minlength=len(self.classes)))
                 if n < 2]
        if small:
            raise TransferlabError(f"{opt('data', self.root)}: too few training images to carve a validation "
                                   f"split in {small} (need at least 2 per class); add images or provide val/")
        train_idx, val_idx = stratified_split(self.train.labels, fraction, seed)
        return replace(self, train=self.train.subset(train_idx), val=self.train.subset(val_idx),
                       val_source="carved")

    def test_files(self) -> list[str]:
        """The test split's files, relative to the dataset's root (what a run records of its test split)."""
        return sorted(self.relative(p) for p in self.test.paths)

    def relative(self, path: Path) -> str:
        """``path`` relative to the dataset's root, as runs record files."""
        return _relative(path, self.root)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:  # a file reached through a folder link outside the root
        return str(path)


def split_difference(recorded: list[str], found: list[str]) -> str | None:
    """What differs between a recorded list of test files and the one found now (None: the same)."""
    missing, extra = sorted(set(recorded) - set(found)), sorted(set(found) - set(recorded))
    if not missing and not extra:
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the run's {len(recorded)} test files are not in it (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} files are in it that the run did not test on (e.g. {extra[0]})")
    return "; ".join(parts)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def _list_dir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise TransferlabError(f"{folder}: cannot list folder ({exc.strerror or exc}); "
                               "fix its permissions or remove it") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:  # a link loop or an unreadable entry
        return False


def _is_file_or_link(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file() or entry.is_symlink()
    except OSError:  # a link loop: kept, so that decoding reports it
        return True


def _image_files(folder: Path, others: dict[str, int] | None = None) -> list[Path]:
    """Image files under ``folder``, recursively; folder links are followed, each real folder once.

    A folder link that points back at the folder itself or one of its parents (a loop) is
    skipped with a warning. An image name that cannot be resolved (a broken link or a file
    link loop) is kept, so that decoding reports it (or ``--skip-bad-images`` drops it).
    ``others`` counts the photos passed over (:data:`UNREAD_PHOTO_EXTENSIONS`), by extension.
    """
    top = folder.resolve()
    seen: set[tuple[int, int]] = set()
    found: list[Path] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            real = current.resolve()
            info = real.stat()
        except OSError as exc:
            raise TransferlabError(f"{current}: cannot read folder ({exc.strerror or exc}); "
                                   "fix or remove it") from None
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in _list_dir(current):
            path = Path(entry.path)
            if _ignored(entry.name):
                continue
            if _is_dir(entry):
                target = path.resolve()
                if entry.is_symlink() and any(target == p or target in p.parents for p in (real, top)):
                    log.warning("ignoring %s: the folder link loops back to %s", path, target)
                else:
                    pending.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS:
                if _is_file_or_link(entry):
                    found.append(path)
                else:
                    log.warning("ignoring %s: not a regular file", path)
            elif others is not None and path.suffix.lower() in UNREAD_PHOTO_EXTENSIONS:
                others[path.suffix.lower()] = others.get(path.suffix.lower(), 0) + 1
    return sorted(found)


def scan_folder(root: Path) -> tuple[tuple[str, ...], Split]:
    """Read ``root/<class>/<image>`` (nested folders allowed); hidden and system files are ignored."""
    if not root.is_dir():
        raise TransferlabError(f"{root}: no such directory")
    classes = tuple(e.name for e in _list_dir(root) if not _ignored(e.name) and _is_dir(e))
    if not classes:
        raise TransferlabError(f"{root}: no class folders; expected {root}/<class name>/<image files>")
    paths: list[Path] = []
    labels: list[int] = []
    skipped: dict[str, int] = {}
    for label, name in enumerate(classes):
        others: dict[str, int] = {}
        files = _image_files(root / name, others)
        if not files:
            found = f"; it holds {_counts(others)}, which transferlab does not read" if others else ""
            raise TransferlabError(f"{root / name}: class folder has no images "
                                   f"({', '.join(sorted(IMAGE_EXTENSIONS))}){found}; convert them to JPEG or PNG, "
                                   "add images, or remove the folder")
        for suffix, n in others.items():
            skipped[suffix] = skipped.get(suffix, 0) + n
        paths.extend(files)
        labels.extend([label] * len(files))
    warn_unread(root, skipped)
    return classes, Split(tuple(paths), tuple(labels))


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` as training finds them (links, loops and unread photos alike), sorted."""
    others: dict[str, int] = {}
    files = _image_files(folder, others)
    warn_unread(folder, others)
    return files


def warn_unread(folder: Path, by_suffix: dict[str, int]) -> None:
    """One warning line for the photos under ``folder`` that transferlab passed over (HEIC, RAW, ...)."""
    if by_suffix:
        log.warning("%s: ignoring %s that transferlab cannot read; convert them to JPEG or PNG", folder,
                    _counts(by_suffix))


def _counts(by_suffix: dict[str, int]) -> str:
    total = sum(by_suffix.values())
    detail = ", ".join(f"{n} {suffix}" for suffix, n in sorted(by_suffix.items(), key=lambda kv: -kv[1]))
    return f"{total} file{'s' if total != 1 else ''} ({detail})"


def stratified_split(strata: Sequence[object], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices so that each stratum sends about ``fraction`` of its items to the test side."""
    by_key: dict[object, list[int]] = {}
    for i, key in enumerate(strata):
        by_key.setdefault(key, []).append(i)
    rng = random.Random(seed)
    train, test = [], []
    for key in sorted(by_key, key=str):
        items = by_key[key]
        rng.shuffle(items)
        n_test = min(len(items) - 1, max(1, round(len(items) * fraction))) if len(items) > 1 else 0
        test.extend(items[:n_test])
        train.extend(items[n_test:])
    return sorted(train), sorted(test)


def _from_folder(root: Path, name: str, seed: int, test_fraction: float) -> Dataset:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such directory"
        raise TransferlabError(f"{opt('data', root)}: {what}; give an ImageFolder root "
                               "(train/ and val/ or test/), or elpv, or hotdog")
    _list_dir(root)  # an unreadable root is named here, before any stat under it (scan_folder names a split's)
    train_dir = root / "train"
    if not train_dir.is_dir():
        train_dir = root
    classes, train = scan_folder(train_dir)
    if len(classes) < 2:
        raise TransferlabError(f"{opt('data', root)}: only one class ({', '.join(classes) or '-'}); a classifier "
                               "needs at least two")
    found = {}
    for test_name in ("val", "test"):
        test_dir = root / test_name
        if train_dir != root and test_dir.exists() and not test_dir.is_dir():
            raise TransferlabError(f"{opt('data', root)}: {test_name} is a file, not a folder of class folders; "
                                   "rename or remove it")
        if train_dir != root and test_dir.is_dir():
            test_classes, test = scan_folder(test_dir)
            if test_classes != classes:
                only_train = sorted(set(classes) - set(test_classes))
                only_test = sorted(set(test_classes) - set(classes))
                raise TransferlabError(
                    f"{opt('data', root)}: class folders differ between train/ and {test_name}/ "
                    f"(only in train: {only_train or '-'}; only in {test_name}: {only_test or '-'}); "
                    "rename them to match")
            found[test_name] = test
    if "test" in found:  # train/ + test/ (+ val/, the validation split)
        return Dataset(name, root, classes, train, found["test"], "test", found.get("val"),
                       "val" if "val" in found else None)
    if "val" in found:  # train/ + val/: val/ is what the run is tested on
        return Dataset(name, root, classes, train, found["val"], "val")
    small = [c for c, n in zip(classes, np.bincount(train.labels, minlength=len(classes))) if n < 2]
    if small:
        raise TransferlabError(f"{opt('data', root)}: too few images to split off a test set in {small} "
                               "(need at least 2 per class); add images or provide val/")
    train_idx, test_idx = stratified_split(train.labels, test_fraction, seed)
    return Dataset(name, root, classes, train.subset(train_idx), train.subset(test_idx), "split")


def resolve_data(spec: str, seed: int = 0, test_fraction: float = 0.25, val_fraction: float = 0.0) -> Dataset:
    """``elpv``, ``hotdog`` or an ImageFolder directory -> :class:`Dataset`.

    A tree with ``train/``, ``val/`` and ``test/`` uses all three; ``train/`` with one of
    ``val/`` or ``test/`` is tested on that one; a bare class-folder tree is split train/test
    by ``test_fraction``. ``val_fraction`` then carves a validation split from train.
    """
    return _resolve(spec, seed, test_fraction).with_validation(val_fraction, seed)


def dataset_for(config: RunConfig, data: str | None = None, validation: bool = True) -> Dataset:
    """A run's dataset, from its config: its data (or ``data``) split with its seed and test fraction, and
    (``validation``) the validation split carved as the config says. The one way a run finds its data."""
    dataset = resolve_data(data or config.data, config.seed, config.test_fraction)
    return dataset.with_validation(config.carve_fraction, config.seed) if validation else dataset


def _resolve(spec: str, seed: int, test_fraction: float) -> Dataset:
    if not str(spec).strip():
        raise TransferlabError(f"{opt('data')} is empty; give DIR (an ImageFolder root), elpv or hotdog")
    if spec in NAMED_DATA:  # config.NAMED_DATA: the named sets, each found (or fetched) by its own function
        return _from_folder({"elpv": elpv_root, "hotdog": hotdog_root}[spec](), spec, seed, test_fraction)
    root = Path(spec).expanduser()
    return _from_folder(root, root.name or str(root), seed, test_fraction)


# --------------------------------------------------------------------------- built-in datasets


def _materialise(target: Path, build) -> Path:
    """Build a directory once, in a temporary sibling, then rename it into place."""
    if target.is_dir():
        return target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        (tmp / MADE_HERE).touch()  # `transferlab cache --clear` deletes only folders that carry it
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def elpv_root() -> Path:
    """The ELPV solar-cell set as an ImageFolder tree (defective = probability >= 0.5).

    Split 75/25, stratified by label and cell type (mono/poly), seed 0.
    """
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise TransferlabError(f"{opt('data', 'elpv')}: the elpv-dataset package is not installed; "
                               "run `pip install elpv-dataset`")
    source = Path(next(iter(spec.submodule_search_locations))) / "data"

    def build(tmp: Path) -> None:
        rows = [line.split() for line in (source / "labels.csv").read_text().splitlines() if line.strip()]
        labels = ["defective" if float(prob) >= 0.5 else "functional" for _, prob, _ in rows]
        strata = [(label, kind) for label, (_, _, kind) in zip(labels, rows)]
        train_idx, test_idx = stratified_split(strata, 0.25, seed=0)
        for split, indices in (("train", train_idx), ("test", test_idx)):
            for i in indices:
                rel = rows[i][0]
                dst = tmp / split / labels[i] / Path(rel).name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, dst)

    return _materialise(cache_dir("datasets") / "elpv", build)


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip, refusing members that would land outside ``target`` (or are links)."""
    target = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        total = sum(info.file_size for info in zf.infolist())
        if total > min(MAX_EXTRACT_BYTES, MAX_EXTRACT_RATIO * max(1, archive.stat().st_size)):
            raise TransferlabError(f"{archive}: would unpack to {total / 1e9:.1f} GB from "
                                   f"{archive.stat().st_size / 1e6:.1f} MB; refusing a possible zip bomb")
        for info in zf.infolist():
            dest = (target / info.filename).resolve()
            if dest != target and target not in dest.parents:
                raise TransferlabError(f"{archive}: member {info.filename!r} would extract outside "
                                       f"{target}; refusing the archive")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise TransferlabError(f"{archive}: member {info.filename!r} is a symbolic link; refusing")
        zf.extractall(target)


def hotdog_root(url: str = HOTDOG_URL, sha1: str = HOTDOG_SHA1) -> Path:
    """The seed's hot dog dataset: downloaded once, SHA-1 checked, safely extracted."""
    target = cache_dir("datasets") / "hotdog"
    if not target.is_dir():
        archive = cache_dir("downloads") / "hotdog.zip"
        present = archive.is_file()
        if not (present and file_digest(archive, "sha1") == sha1):
            try:
                with download_timeout():
                    torch.hub.download_url_to_file(url, str(archive), progress=False)
            except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP errors
                if present:
                    raise TransferlabError(f"{opt('data', 'hotdog')}: {archive} is there but its SHA-1 is not "
                                           f"{sha1} (a partial or another file), and a new download failed "
                                           f"({type(exc).__name__}); replace it with the right file") from None
                raise TransferlabError(f"{opt('data', 'hotdog')}: cannot download {url} ({type(exc).__name__}); "
                                       f"put hotdog.zip at {archive}, or use {opt('data', 'DIR')}") from None
            if file_digest(archive, "sha1") != sha1:
                archive.unlink()
                raise TransferlabError(f"{opt('data', 'hotdog')}: {url} has the wrong SHA-1 (expected {sha1}); "
                                       "the download was deleted, try again")
        _materialise(target, lambda tmp: safe_extract(archive, tmp))
    inner = target / "hotdog"
    return inner if inner.is_dir() else target
