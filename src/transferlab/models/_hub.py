"""timm's weight files on the Hugging Face hub: a copy in the hub cache first, then a download into it.

Which file timm loads for a pretrained config: its ``hf_hub_filename``, else ``model.safetensors``
with ``pytorch_model.bin`` after it (``timm.models._hub.load_state_dict_from_hf``). The cache is
huggingface_hub's own (``$HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), shared with timm.
huggingface_hub is imported inside the functions.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["hub_files", "hub_cache_dir", "cached_hub_file", "hub_reachable", "download_hub_file"]


def hub_files(cfg: dict[str, Any]) -> tuple[str, str | None, list[str]] | None:
    """(repo id, revision, file names in the order timm tries them) of a pretrained config; None off the hub."""
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    name = cfg.get("hf_hub_filename")
    if not name:
        names = ["model.safetensors", "pytorch_model.bin"]
    elif name.endswith(".bin"):
        names = [name[:-4] + ".safetensors", name]
    else:
        names = [name]
    return repo, revision or None, names


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hub_file(repo: str, revision: str | None, names: list[str]) -> Path | None:
    """The first of ``names`` that is in the hub cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def hub_reachable() -> bool:
    """False when the hub's host name does not resolve (an offline machine), so that a download
    does not sit through huggingface_hub's retries first."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, 443))
    except OSError:
        return False


def download_hub_file(repo: str, revision: str | None, names: list[str]) -> Path:
    """Download the first of ``names`` the repository has into the hub cache, as timm does; its path.

    huggingface_hub's warnings about retries stay quiet: a failure ends in the caller's one line.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not hub_reachable():
        raise ConnectionError("the Hugging Face hub is unreachable (its host name does not resolve)")
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        for name in names:
            try:
                return Path(hf_hub_download(repo, name, revision=revision, library_name="timm"))
            except EntryNotFoundError as exc:
                if isinstance(exc, LocalEntryNotFoundError):  # offline: not a missing file
                    raise
                continue  # the repository has no such file: try the next name
    finally:
        hub_log.setLevel(level)
    raise FileNotFoundError(f"{repo} has none of {', '.join(names)}")
