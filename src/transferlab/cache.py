"""Decode each image once: uint8 tensors (shorter side = the eval resize), cached in memory and on disk.

A cache entry is keyed by the files' contents and the preprocessing that shaped
them, so editing an image, or asking for another size, makes a new entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .data import decode_one
from .errors import TransferlabError
from .io import atomic_write, cache_dir
from .progress import progress
from .transforms import Preprocessing

__all__ = ["DecodedImages", "decode", "cache_key"]

log = logging.getLogger(__name__)

_MEMORY: OrderedDict[str, DecodedImages] = OrderedDict()
_MEMORY_ENTRIES = 4


class DecodedImages:
    """Decoded images and the indices (into the requested paths) that decoded."""

    def __init__(self, images: list[torch.Tensor], kept: list[int]) -> None:
        self.images = images
        self.kept = kept

    def __len__(self) -> int:
        return len(self.images)


def cache_key(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool) -> str:
    """sha256 over every file's bytes plus the decode parameters."""
    digest = hashlib.sha256(json.dumps([pre.resize_size, pre.interpolation, skip_bad, 1]).encode())
    for path in paths:
        try:
            digest.update(hashlib.sha1(Path(path).read_bytes()).digest())
        except OSError:  # decoding reports it, with the right advice for the kind of failure
            digest.update(b"unreadable:" + os.fsencode(str(path)))
    return digest.hexdigest()[:32]


def _decode_or_error(path: Path, pre: Preprocessing) -> torch.Tensor | TransferlabError:
    try:
        return decode_one(path, pre)
    except TransferlabError as exc:
        return exc


def _decode_all(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool, desc: str, quiet: bool,
                ) -> DecodedImages:
    images: list[torch.Tensor] = []
    kept: list[int] = []
    skipped = 0
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: _decode_or_error(p, pre), paths)
        for i, item in enumerate(progress(results, total=len(paths), desc=desc, quiet=quiet, unit="img")):
            if isinstance(item, TransferlabError):
                if not skip_bad:
                    raise TransferlabError(f"{item} (or pass --skip-bad-images)")
                skipped += 1
                log.warning("skipped bad image: %s", item)
                continue
            images.append(item)
            kept.append(i)
    if skipped:
        log.warning("skipped %d of %d images (--skip-bad-images)", skipped, len(paths))
    return DecodedImages(images, kept)


def _load(path: Path) -> DecodedImages | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
            kept = json.loads(meta["kept"])
            return DecodedImages([fh.get_tensor(str(i)) for i in range(len(kept))], kept)
    except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
        log.warning("ignoring damaged cache entry %s (%s)", path, type(exc).__name__)
        return None


def _save(path: Path, decoded: DecodedImages) -> None:
    from safetensors.torch import save_file

    tensors = {str(i): t.contiguous() for i, t in enumerate(decoded.images)}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"kept": json.dumps(decoded.kept)}))
    except OSError as exc:  # a full or read-only disk costs speed, not the run
        log.warning("could not write decode cache %s (%s)", path, exc.strerror)


def decode(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool = False, desc: str = "decode",
           quiet: bool = False, disk: bool = True) -> DecodedImages:
    """Decoded uint8 CHW images for ``paths``, from memory, from disk, or decoded now (and cached)."""
    key = cache_key(paths, pre, skip_bad)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = cache_dir("decoded") / f"{key}.safetensors"
    decoded = _load(path) if disk and path.is_file() else None
    if decoded is None:
        decoded = _decode_all(paths, pre, skip_bad, desc, quiet)
        if disk:
            _save(path, decoded)
    _MEMORY[key] = decoded
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return decoded
