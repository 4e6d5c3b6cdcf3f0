"""Work done once per input: decoded images, and body features for linear probes.

Decoded images are uint8 tensors (shorter side = the eval resize), cached in memory
and on disk. An entry is keyed by the files' contents and the preprocessing that
shaped them, so editing an image, or asking for another size, makes a new entry.

Body features (:func:`features`) are cached on disk under a key the caller builds
from everything they depend on: the weights file's digest, the decoded images' key,
the crops and the numeric precision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..console import progress
from ..errors import TransferlabError, opt, render
from ..files import atomic_write, cache_dir, file_digest
from .images import open_header
from .transforms import Preprocessing, decode_one

__all__ = ["DecodedImages", "decode", "cache_key", "features"]

log = logging.getLogger(__name__)

_MEMORY: OrderedDict[str, DecodedImages] = OrderedDict()
_MEMORY_ENTRIES = 4
CACHE_MB_ENV = "TRANSFERLAB_CACHE_MB"
DEFAULT_CACHE_MB = 10_000
STALE_PARTIAL_S = 3600  # a partial entry this old belongs to no running process


class DecodedImages:
    """Decoded images and the indices (into the requested paths) that decoded."""

    def __init__(self, images: list[torch.Tensor], kept: list[int], key: str = "") -> None:
        self.images = images
        self.kept = kept
        self.key = key  # the cache key: the files' contents and the decode parameters

    def __len__(self) -> int:
        return len(self.images)


def cache_key(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool) -> str:
    """sha256 over every file's bytes plus the decode parameters."""
    digest = hashlib.sha256(json.dumps([pre.resize_size, pre.interpolation, skip_bad, 1]).encode())
    for path in paths:
        try:
            digest.update(bytes.fromhex(file_digest(path, "sha1")))  # read in blocks: a huge file costs no memory
        except OSError:  # decoding reports it, with the right advice for the kind of failure
            digest.update(b"unreadable:" + os.fsencode(str(path)))
    return digest.hexdigest()[:32]


def _decode_or_error(path: Path, pre: Preprocessing) -> torch.Tensor | TransferlabError:
    try:
        return decode_one(path, pre)
    except TransferlabError as exc:
        return exc


def _decode_all(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool, desc: str, quiet: bool,
                unusable: str | None = None) -> DecodedImages:
    images: list[torch.Tensor] = []
    kept: list[int] = []
    skipped = 0
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: _decode_or_error(p, pre), paths)
        for i, item in enumerate(progress(results, total=len(paths), desc=desc, quiet=quiet, unit="img")):
            if isinstance(item, TransferlabError):
                if not skip_bad:
                    raise TransferlabError(f"{item} ({unusable or 'or pass ' + opt('skip_bad_images')})")
                skipped += 1
                log.warning("skipped bad image: %s", item)
                continue
            images.append(item)
            kept.append(i)
    if skipped:
        log.warning("skipped %d of %d images (%s)", skipped, len(paths), render(opt("skip_bad_images")))
    return DecodedImages(images, kept)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata of a cache entry; None (with a warning) when it is damaged."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return {name: fh.get_tensor(name) for name in fh.keys()}, fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt, never trusted
        log.warning("ignoring damaged cache entry %s (%s)", path, type(exc).__name__)
        return None


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {name: t.contiguous() for name, t in tensors.items()}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except OSError as exc:  # a full or read-only disk costs speed, not the run
        log.warning("could not write cache entry %s (%s)", path, exc.strerror)
        return
    evict(path.parent, keep=path)


def cache_limit() -> int:
    """Bytes each cache folder may hold: ``$TRANSFERLAB_CACHE_MB`` (default 10,000 MB)."""
    value = os.environ.get(CACHE_MB_ENV, "").strip()
    try:
        megabytes = float(value) if value else DEFAULT_CACHE_MB
    except ValueError:
        megabytes = -1
    if not megabytes > 0:
        raise TransferlabError(f"{CACHE_MB_ENV}={value}: expected a positive number of megabytes; fix or unset it")
    return int(megabytes * 1e6)


def evict(folder: Path, keep: Path | None = None, limit: int | None = None) -> list[Path]:
    """Delete the least recently used entries of a cache folder until it fits ``limit``; the removed files."""
    limit = cache_limit() if limit is None else limit
    for partial in folder.glob(".*.tmp"):  # left by a process killed while writing
        try:
            if time.time() - partial.stat().st_mtime > STALE_PARTIAL_S:
                partial.unlink()
        except OSError:
            pass
    entries = []
    for entry in folder.glob("*.safetensors"):
        try:
            st = entry.stat()
        except OSError:
            continue
        entries.append((st.st_mtime, st.st_size, entry))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry == keep:
            continue
        entry.unlink(missing_ok=True)
        total -= size
        removed.append(entry)
    if removed:
        log.info("cache %s: removed %d least recently used entries to stay under %.0f MB", folder, len(removed),
                 limit / 1e6)
    return removed


def _touch(path: Path) -> None:
    """Mark a cache entry as just used (eviction removes the least recently used first)."""
    try:
        os.utime(path)
    except OSError:
        pass


def _load(path: Path, key: str) -> DecodedImages | None:
    _touch(path)
    entry = _read(path)
    if entry is None:
        return None
    tensors, meta = entry
    try:
        kept = json.loads(meta["kept"])
        return DecodedImages([tensors[str(i)] for i in range(len(kept))], kept, key)
    except (KeyError, ValueError, TypeError):
        log.warning("ignoring damaged cache entry %s", path)
        return None


def _save(path: Path, decoded: DecodedImages) -> None:
    _write(path, {str(i): t for i, t in enumerate(decoded.images)}, {"kept": json.dumps(decoded.kept)})


def decoded_bytes(paths: Sequence[Path], pre: Preprocessing) -> int:
    """The memory the decoded images will take (uint8 RGB, shorter side ``resize_size``), from their headers."""
    total = 0
    for path in paths:
        try:
            with open_header(Path(path)) as img:
                width, height = img.size
        except Exception:  # noqa: BLE001 - decoding reports unreadable files
            continue
        short, long_ = sorted((max(width, 1), max(height, 1)))
        total += 3 * pre.resize_size * int(pre.resize_size * long_ / short)
    return total


def available_memory(cgroup_root: Path = Path("/sys/fs/cgroup"),
                     own_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes of memory available to new allocations, or None where unknown: the machine's ``MemAvailable``,
    or less where this process's cgroup (Docker, Kubernetes, SLURM; v1 or v2) allows less."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    headroom = cgroup_headroom(cgroup_root, own_cgroup)
    if headroom is not None:
        found.append(headroom)
    return min(found) if found else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) or garbage: no limit


def cgroup_headroom(cgroup_root: Path, own_cgroup: Path) -> int | None:
    """Limit minus usage of the tightest memory cgroup this process is in (its own and every parent), or None."""
    try:
        lines = own_cgroup.read_text().splitlines()
    except OSError:
        return None
    folders = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2, the unified hierarchy
            folders.append((cgroup_root / path.lstrip("/"), "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):  # v1
            folders.append((cgroup_root / "memory" / path.lstrip("/"), "memory.limit_in_bytes",
                            "memory.usage_in_bytes"))
    room = []
    for folder, limit_name, usage_name in folders:
        top = cgroup_root if limit_name == "memory.max" else cgroup_root / "memory"
        while True:
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and limit < 1 << 60 and usage is not None:  # v1 says "no limit" with ~2**63
                room.append(max(limit - usage, 0))
            if folder == top or top not in folder.parents:
                break
            folder = folder.parent
    return min(room) if room else None


def check_memory(paths: Sequence[Path], pre: Preprocessing, share: float = 0.8) -> None:
    """Refuse, with the numbers, to decode a set that cannot fit in memory (before anything is decoded)."""
    available = available_memory()
    if available is None:
        return
    need = decoded_bytes(paths, pre)
    if need > share * available:
        raise TransferlabError(f"{len(paths)} images decoded at resize {pre.resize_size} px need about "
                               f"{need / 1e9:.2f} GB of memory and {available / 1e9:.2f} GB are available; lower "
                               f"{opt('image_size')} / {opt('resize_size')} or use fewer images")


def decode(paths: Sequence[Path], pre: Preprocessing, skip_bad: bool = False, desc: str = "decode",
           quiet: bool = False, disk: bool = True, unusable: str | None = None) -> DecodedImages:
    """Decoded uint8 CHW images for ``paths``, from memory, from disk, or decoded now (and cached).

    ``unusable``: the advice for an image that cannot be decoded, where skipping it is no choice (the
    default names ``--skip-bad-images``).
    """
    key = cache_key(paths, pre, skip_bad)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = cache_dir("decoded") / f"{key}.safetensors"
    decoded = _load(path, key) if disk and path.is_file() else None
    if decoded is None:
        check_memory(paths, pre)
        decoded = _decode_all(paths, pre, skip_bad, desc, quiet, unusable)
        decoded.key = key
        if disk:
            _save(path, decoded)
    _MEMORY[key] = decoded
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return decoded


def features(key: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()`` (a float tensor), or the same tensor from disk when ``key`` was computed before.

    ``key`` must name everything the result depends on; it is hashed into the file name
    and stored beside the tensor, which is only used when both match.
    """
    text = json.dumps(key, sort_keys=True)
    path = cache_dir("features") / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"
    entry = _read(path) if path.is_file() else None
    if entry is not None and entry[1].get("key") == text and "features" in entry[0]:
        _touch(path)
        return entry[0]["features"]
    result = compute()
    _write(path, {"features": result}, {"key": text})
    return result
