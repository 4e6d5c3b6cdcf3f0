"""timm as a second model source: its names, networks, heads, stages and preprocessing.

``--model`` takes timm's own names, with or without a pretrained tag (``convnext_tiny.fb_in22k``,
``tf_efficientnet_lite0``). Where torchvision has the same name, torchvision wins and
``timm:NAME`` selects timm (:func:`transferlab.models.model.model_source`).

- The network is timm's own module (``timm.create_model(name, pretrained=False)``), so its
  ``state_dict`` keys are timm's. Its classifier is the layer its ``pretrained_cfg`` names,
  replaced through the model's ``reset_classifier``.
- Stages come from the model's ``group_matcher(coarse=True)``, grouped as timm groups
  parameters for layer decay: the first group is ``stem`` (when timm calls it that), the
  others ``stage1``, ``stage2``...; parameters no pattern matches (a final norm before the
  classifier) join the last stage.
- Preprocessing comes from timm's own resolver, ``timm.data.resolve_data_config``: input
  size, ``crop_pct`` (resize = floor(size / crop_pct)), interpolation, mean and std.

timm is imported inside the functions, so the command line starts without it.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any

from ..errors import TransferlabError, opt

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..data.transforms import Preprocessing

__all__ = ["TIMM_PREFIX", "split_prefix", "is_timm_model", "list_timm_models", "pretrained_cfg", "custom_load",
           "create_net", "head_name", "reset_head", "stage_table", "preprocessing", "adapt_state",
           "imagenet_categories"]

TIMM_PREFIX = "timm:"
StageTable = list[tuple[str, list[str]]]


def split_prefix(name: str) -> tuple[bool, str]:
    """(whether ``timm:`` forces timm, the name without it)."""
    return (True, name[len(TIMM_PREFIX):]) if name.startswith(TIMM_PREFIX) else (False, name)


def is_timm_model(name: str) -> bool:
    """True for a timm architecture, or an architecture with one of its pretrained tags (``arch.tag``)."""
    import timm.models as tm

    arch, _, tag = name.partition(".")
    if not tm.is_model(arch):
        return False
    return not tag or name in tm.list_pretrained(arch + ".*")


def list_timm_models(pattern: str = "*") -> list[str]:
    """timm architectures matching a shell-style ``pattern``."""
    import timm

    return timm.list_models(pattern)


def pretrained_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of ``name`` (its default tag when it has none) as a dict; {} if timm has none."""
    import timm.models as tm

    try:
        cfg = tm.get_pretrained_cfg(name)
    except RuntimeError as exc:  # a tag the architecture does not have
        raise TransferlabError(f"{opt('model', name)}: {exc}; `transferlab models '{name.partition('.')[0]}*'` "
                               "lists its tags") from None
    return cfg.to_dict() if cfg is not None else {}


def custom_load(cfg: dict[str, Any]) -> bool:
    """True when timm loads these weights with model-specific code (an .npz file), not as a state dict."""
    if cfg.get("hf_hub_id"):
        return bool(cfg.get("hf_hub_filename")) and cfg.get("custom_load") == "hf"
    return bool(cfg.get("custom_load"))


def create_net(name: str) -> nn.Module:
    """timm's network for ``name``, randomly initialised, with the class count of its pretrained head."""
    import timm

    try:
        return timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise TransferlabError(f"{opt('model', name)}: timm cannot build it ({exc})") from None


def head_name(net: nn.Module, name: str) -> str:
    """The module path of the classifier, from the network's ``pretrained_cfg``."""
    classifier = (getattr(net, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(classifier, (tuple, list)):
        raise TransferlabError(f"{opt('model', name)}: has {len(classifier)} classifier heads "
                               f"({', '.join(classifier)}), which transferlab cannot fine-tune; choose a model "
                               "with one (e.g. the same family without 'distilled')")
    if not classifier:
        raise TransferlabError(f"{opt('model', name)}: timm names no classifier for it")
    return classifier


def reset_head(net: nn.Module, name: str, head: str, num_classes: int) -> None:
    """A new ``num_classes`` classifier through the model's own ``reset_classifier``; it must be a Linear."""
    from torch import nn

    net.reset_classifier(num_classes)
    layer = net.get_submodule(head)
    if not isinstance(layer, nn.Linear):
        raise TransferlabError(f"{opt('model', name)}: its classifier {head} is a {type(layer).__name__}, "
                               "not a Linear layer; transferlab cannot fine-tune it")


def _unmatched(param: str, matcher: dict[str, Any]) -> bool:
    """True when no pattern of a timm group matcher takes ``param`` (timm puts those in a last group)."""
    for spec in matcher.values():
        if spec is None:
            continue
        patterns = [s[0] for s in spec] if isinstance(spec, (tuple, list)) else [spec]
        if any(re.match(p, param) for p in patterns):
            return False
    return True


def _cover(net: nn.Module, names: set[str]) -> list[str]:
    """The fewest module paths (or parameter names) whose parameters are exactly ``names``."""
    prefixes: list[str] = []

    def walk(module: nn.Module, path: str) -> None:
        own = {f"{path}{n}" for n, _ in module.named_parameters()}
        if own and own <= names:
            prefixes.append(path.rstrip(".") or "")
            return
        for n, _ in module.named_parameters(recurse=False):
            if f"{path}{n}" in names:
                prefixes.append(f"{path}{n}")
        for child_name, child in module.named_children():
            walk(child, f"{path}{child_name}.")

    walk(net, "")
    return prefixes


def _groups(net: nn.Module, params: list[str]) -> tuple[list[list[str]], bool]:
    """Parameter names by timm's coarse group matcher, in forward order; and whether group 0 is the stem."""
    from timm.models._manipulate import group_with_matcher

    try:
        matcher = net.group_matcher(coarse=True)
    except Exception:  # noqa: BLE001 - none (AttributeError) or a broken one: one stage per child instead
        return [], False
    if isinstance(matcher, dict):
        trailing = [p for p in params if _unmatched(p, matcher)]
        skip = set(trailing)
        grouped = group_with_matcher(((p, None) for p in params if p not in skip), matcher)
        groups = [list(v) for _, v in sorted(grouped.items())]
        if groups and trailing:
            groups[-1].extend(trailing)  # a final norm or neck: with the last stage, as for torchvision
        stem = next(iter(matcher), None) == "stem"
        if stem and groups:
            stem = all(re.match(matcher["stem"], p) for p in groups[0]) if isinstance(matcher["stem"], str) else False
        return groups, stem
    grouped = group_with_matcher(((p, None) for p in params), matcher)
    return [list(v) for _, v in sorted(grouped.items())], False


def stage_table(net: nn.Module, head: str) -> StageTable:
    """(stage name, module prefixes) in forward order, from the model's group matcher; the head excluded.

    A model without a group matcher gets one stage per top-level child.
    """
    params = [n for n, _ in net.named_parameters() if not (n == head or n.startswith(head + "."))]
    groups, stem = _groups(net, params)
    if not groups:
        groups = _by_child(net, params)
    names = (["stem"] if stem else []) + [f"stage{i}" for i in range(1, len(groups) + 1 - stem)]
    return [(stage, _cover(net, set(group))) for stage, group in zip(names, groups)]


def _by_child(net: nn.Module, params: list[str]) -> list[list[str]]:
    order: dict[str, list[str]] = {}
    for p in params:
        order.setdefault(p.split(".")[0], []).append(p)
    return list(order.values())


def preprocessing(cfg: dict[str, Any], overrides: dict[str, Any] | None = None) -> Preprocessing:
    """Our :class:`Preprocessing` from timm's resolver over a pretrained config (``overrides`` win).

    The crop is timm's ``center`` mode (shorter side to floor(size / crop_pct), then a center crop),
    also for the few configs that ask for ``squash`` or ``border``.
    """
    import math

    from timm.data import resolve_data_config

    from ..data.transforms import Preprocessing

    data = resolve_data_config(args=dict(overrides or {}), pretrained_cfg=cfg)
    _, height, width = data["input_size"]
    if height != width:
        raise TransferlabError(f"{opt('model', cfg.get('architecture'))}: its input is {height}x{width}; "
                               "transferlab crops squares only")
    interpolation = data["interpolation"] if data["interpolation"] in ("bilinear", "bicubic", "nearest") else "bilinear"
    return Preprocessing(crop_size=int(height), resize_size=math.floor(height / data["crop_pct"]),
                         mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
                         interpolation=interpolation)


def imagenet_categories(cfg: dict[str, Any]) -> tuple[str, ...] | None:
    """The ImageNet-1k class names (torchvision's spelling) when the weights' head is ImageNet-1k's."""
    from timm.data import infer_imagenet_subset

    if infer_imagenet_subset(cfg) != "imagenet-1k" or cfg.get("label_offset"):
        return None
    from torchvision.models import MobileNet_V2_Weights

    return tuple(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _body_fits(net: nn.Module, state: dict[str, torch.Tensor], head: str) -> bool:
    own = net.state_dict()
    body = [k for k in own if not (k == head or k.startswith(head + "."))]
    return all(k in state and state[k].shape == own[k].shape for k in body)


def adapt_state(net: nn.Module, state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """``state`` as it is when its body fits; else passed through timm's checkpoint filter for the family.

    timm's hub weights are in its own layout already; the filter converts the original
    layouts some families' weights were published in.
    """
    if _body_fits(net, state, head):
        return state
    module = sys.modules.get(type(net).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        converted = convert(dict(state), net)
    except Exception:  # noqa: BLE001 - not that layout either: the caller reports what does not fit
        return state
    return converted if _body_fits(net, converted, head) else state
