"""Small file helpers: atomic writes, file digests and where caches live."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import TransferlabError, WriteError, first_line, opt

__all__ = ["read_settings", "atomic_write", "atomic_write_text", "atomic_write_json", "cache_dir", "torch_hub_dir",
           "file_digest", "CACHE_KINDS", "DOWNLOAD_TIMEOUT", "download_timeout", "cache_path", "cache_usage",
           "clear_cache", "own_entries", "MADE_HERE", "readable", "readable_tree", "check_writable"]

# What transferlab keeps on disk, by kind (README, "Caches"). `weights` is torch's own hub cache,
# which other programs share: it is cleared only when asked for by name.
CACHE_KINDS = ("decoded", "features", "datasets", "downloads", "weights")


def readable(name: str) -> str:
    """A file or class name as a person reads it: bytes that are not UTF-8 (held as surrogates) shown as ``\\xNN``.

    The files keep the name itself; a name shown in a figure, a web page or JSON for a browser is this one.
    """
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def readable_tree(value: Any) -> Any:
    """:func:`readable` applied to every string, key or value, in nested dicts and lists (for display only)."""
    if isinstance(value, str):
        return readable(value)
    if isinstance(value, dict):
        return {readable_tree(k): readable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [readable_tree(v) for v in value]
    return value


def check_writable(folder: str | Path) -> None:
    """:class:`WriteError` now if ``folder`` (made later where new) cannot be written: before minutes of work."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        cause = OSError(errno.EROFS, "Read-only file system") if read_only else \
            OSError(errno.EACCES, "Permission denied")
        raise WriteError(folder, cause)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step.

    A reader sees either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # read-only, permission denied, under a file
        raise WriteError(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes 0600, and some writers replace the file (safetensors): give the result the mode open() would
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, TransferlabError) or _disk_full(exc):
            raise WriteError(path, exc) from None  # the file at ``path`` is as it was
        raise
    return path


def _disk_full(exc: BaseException) -> bool:
    """A writer's own error for a full disk or a failed write (torch.save: RuntimeError; safetensors' error)."""
    text = str(exc)
    return not isinstance(exc, TransferlabError) and any(
        gist in text for gist in ("No space left", "os error 28", "file write failed", "Disk quota exceeded"))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """UTF-8; a file name that is not valid UTF-8 (held as surrogates) is written back as its own bytes."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def cache_dir(*parts: str) -> Path:
    """``$TRANSFERLAB_HOME`` (default ``~/.cache/transferlab``) joined with ``parts``, created."""
    path = _home().joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferlabError(f"{path}: cannot create the cache folder ({exc.strerror or exc}); set "
                               "TRANSFERLAB_HOME to a folder you can write") from None
    return path


DOWNLOAD_TIMEOUT = 60.0  # seconds a download may wait on the network for any one read


@contextmanager
def download_timeout(seconds: float | None = None) -> Iterator[None]:
    """Give sockets opened inside (urllib's downloads, which take no timeout) a read timeout
    (default :data:`DOWNLOAD_TIMEOUT`)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT if seconds is None else seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def torch_hub_dir() -> Path:
    """torch's hub directory, found as ``torch.hub.get_dir()`` finds it, without importing torch:
    ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_path(kind: str) -> Path:
    """Where a kind of cache lives (not created)."""
    if kind == "weights":
        return torch_hub_dir() / "checkpoints"
    return _home() / kind


def _home() -> Path:
    return Path(os.environ.get("TRANSFERLAB_HOME") or Path.home() / ".cache" / "transferlab")


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else []


def cache_usage() -> dict[str, tuple[Path, int, int]]:
    """kind -> (folder, bytes, files)."""
    usage = {}
    for kind in CACHE_KINDS:
        path = cache_path(kind)
        files = _files(path)
        usage[kind] = (path, sum(p.stat().st_size for p in files), len(files))
    return usage


# What transferlab itself writes under each kind; nothing else there is ever deleted (a user's files stay).
MADE_HERE = ".transferlab-made"  # marker in every folder transferlab builds (datasets/elpv, datasets/hotdog)
_OWN_FILES = {"decoded": re.compile(r"\.?[0-9a-f]{32}\.safetensors(\..*\.tmp)?"),
              "features": re.compile(r"\.?[0-9a-f]{32}\.safetensors(\..*\.tmp)?"),
              "downloads": re.compile(r"\.?hotdog\.zip(\..*\.tmp)?")}


def own_entries(kind: str) -> tuple[list[Path], list[Path]]:
    """The entries of a cache folder that transferlab wrote, and the others (which it never deletes).

    ``weights`` is torch's hub cache, shared with other programs: every file there counts (it is
    cleared only when asked for by name).
    """
    path = cache_path(kind)
    if not path.is_dir() or path.is_symlink():
        return [], []
    own, other = [], []
    for entry in sorted(path.iterdir()):
        if entry.is_symlink():
            mine = False
        elif kind == "weights":
            mine = entry.is_file()
        elif kind == "datasets":
            mine = entry.is_dir() and (entry / MADE_HERE).is_file()
        else:
            mine = entry.is_file() and bool(_OWN_FILES[kind].fullmatch(entry.name))
        (own if mine else other).append(entry)
    return own, other


def clear_cache(kind: str) -> tuple[int, list[Path]]:
    """Delete what transferlab wrote in a kind of cache: the bytes freed, and the entries kept (not its own)."""
    import shutil

    own, other = own_entries(kind)
    freed = 0
    for entry in own:
        if entry.is_dir():
            freed += sum(p.stat().st_size for p in _files(entry))
            shutil.rmtree(entry)
        else:
            freed += entry.stat().st_size
            entry.unlink()
    return freed, other


def read_settings(path: Path, option: str, as_json: str, max_bytes: int | None = None) -> Any:
    """A settings file's content: JSON for ``.json``, YAML (which JSON also is) otherwise.

    Every failure is one line naming ``--option PATH``: unreadable, over ``max_bytes``, not valid JSON or
    YAML, or YAML without PyYAML (``as_json`` says how to give the same as JSON).
    """
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise TransferlabError(f"{opt(option, path)}: over {max_bytes >> 20} MB; not settings")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc, 200)
        raise TransferlabError(f"{opt(option, path)}: cannot read it ({reason})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise TransferlabError(f"{opt(option, path)}: not valid JSON ({first_line(exc, 200)})") from None
    try:
        import yaml
    except ImportError:
        raise TransferlabError(f"{opt(option, path)}: reading YAML needs PyYAML; pip install 'transferlab[report]', "
                               f"or {as_json}") from None
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise TransferlabError(f"{opt(option, path)}: not valid YAML ({first_line(exc, 200)})") from None
