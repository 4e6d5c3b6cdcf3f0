"""Target models: a torchvision or timm body with a new head, named stages, freezing and parameter groups.

A name is torchvision's when torchvision has it, else timm's; ``timm:NAME`` selects timm
(:func:`model_source`, timm's side in :mod:`transferlab.models.timm_source`).
Each model family names its classifier layer and its stages (in forward order);
``--freeze STAGE`` freezes every stage up to and including STAGE, ``body`` freezes
all but the new head, ``none`` nothing. Frozen parameters have
``requires_grad=False``, are left out of the optimizer, and their BatchNorm
layers stay in eval mode so their running statistics never change.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models import get_model, list_models

from ..errors import TransferlabError, opt
from . import timm_source as timm_models

__all__ = ["Family", "TransferModel", "create_model", "list_model_names", "model_source", "family_of",
           "stage_names", "param_groups", "init_head", "folded"]

log = logging.getLogger(__name__)

StageTable = list[tuple[str, list[str]]]


def _features(net: nn.Module, groups: list[tuple[str, range]], extra_last: tuple[str, ...] = ()) -> StageTable:
    table = [(name, [f"features.{i}" for i in idx]) for name, idx in groups]
    table[-1][1].extend(extra_last)
    return table


def _resnet(net: nn.Module) -> StageTable:
    return [("stem", ["conv1", "bn1"])] + [(f"layer{i}", [f"layer{i}"]) for i in range(1, 5)]


def _mobilenet_v2(net: nn.Module) -> StageTable:
    return _features(net, [("stem", range(0, 1)), ("stage1", range(1, 2)), ("stage2", range(2, 4)),
                           ("stage3", range(4, 7)), ("stage4", range(7, 14)), ("stage5", range(14, 19))])


def _mobilenet_v3(net: nn.Module) -> StageTable:
    if len(net.features) == 17:  # large
        groups = [range(0, 1), range(1, 2), range(2, 4), range(4, 7), range(7, 13), range(13, 17)]
    else:  # small
        groups = [range(0, 1), range(1, 2), range(2, 4), range(4, 9), range(9, 13)]
    names = ["stem"] + [f"stage{i}" for i in range(1, len(groups))]
    return _features(net, list(zip(names, groups)), extra_last=("classifier.0",))


def _efficientnet(net: nn.Module) -> StageTable:
    n = len(net.features)  # stem, stages..., final 1x1 conv
    groups = [("stem", range(0, 1))] + [(f"stage{i}", range(i, i + 1)) for i in range(1, n - 2)]
    groups.append((f"stage{n - 2}", range(n - 2, n)))
    return _features(net, groups)


def _convnext(net: nn.Module) -> StageTable:
    groups = [("stem", range(0, 1)), ("stage1", range(1, 2)), ("stage2", range(2, 4)),
              ("stage3", range(4, 6)), ("stage4", range(6, 8))]
    return _features(net, groups, extra_last=("classifier.0",))


_SPLIT = ("features", "layers", "blocks", "trunk_output")


def _generic(net: nn.Module) -> StageTable:
    """Top-level children in order; a feature trunk (``features``, ``layers``...) is split into its children.

    Parameters held by the model itself (a ViT's class token) go to the first stage.
    """
    table: StageTable = []
    for name, child in net.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in _SPLIT and isinstance(child, (nn.Sequential, nn.ModuleList)):
            table.extend((f"{name}.{sub_name}", [f"{name}.{sub_name}"]) for sub_name, sub in child.named_children()
                         if any(True for _ in sub.parameters()))
        else:
            table.append((name, [name]))
    own = [n for n, _ in net.named_parameters(recurse=False)]
    if own and table:
        table[0][1].extend(own)
    return table


def _last_linear(net: nn.Module) -> str:
    names = [name for name, mod in net.named_modules() if isinstance(mod, nn.Linear)]
    if not names:
        raise TransferlabError("this model has no Linear classifier to replace")
    return names[-1]


def _timm_head(net: nn.Module) -> str:
    return timm_models.head_name(net, (getattr(net, "pretrained_cfg", None) or {}).get("architecture", "?"))


def _timm_stages(net: nn.Module) -> StageTable:
    return timm_models.stage_table(net, _timm_head(net))


@dataclass(frozen=True)
class Family:
    """How a family of models is cut into stages and a classifier."""

    name: str
    patterns: tuple[str, ...]
    head: str | None  # module path of the classifier layer; None: ``find_head`` finds it
    stages: Callable[[nn.Module], StageTable]
    find_head: Callable[[nn.Module], str] = _last_linear

    def matches(self, model: str) -> bool:
        return any(fnmatch.fnmatch(model, p) for p in self.patterns)


FAMILIES: tuple[Family, ...] = (
    Family("resnet", ("resnet*", "resnext*", "wide_resnet*"), "fc", _resnet),
    Family("mobilenet_v2", ("mobilenet_v2",), "classifier.1", _mobilenet_v2),
    Family("mobilenet_v3", ("mobilenet_v3_*",), "classifier.3", _mobilenet_v3),
    Family("efficientnet", ("efficientnet_*",), "classifier.1", _efficientnet),
    Family("convnext", ("convnext_*",), "classifier.2", _convnext),
    Family("generic", ("*",), None, _generic),
)
# every timm model: the classifier its pretrained_cfg names, stages from its group matcher
TIMM = Family("timm", (), None, _timm_stages, _timm_head)

UNSUPPORTED = {"squeezenet1_0", "squeezenet1_1"}  # convolutional classifier, no Linear head


def list_model_names(pattern: str = "*") -> list[str]:
    """torchvision classification models this tool can fine-tune (shell-style pattern)."""
    import torchvision.models as tvm

    names = list_models(module=tvm)
    return [n for n in names if fnmatch.fnmatch(n, pattern) and n not in UNSUPPORTED]


def family_of(model: str) -> Family:
    """The family of a model name (:data:`TIMM` for every timm model)."""
    return TIMM if model_source(model)[0] == "timm" else next(f for f in FAMILIES if f.matches(model))


def model_source(name: str) -> tuple[str, str]:
    """("torchvision", name) or ("timm", name without ``timm:``): torchvision wins a name both have."""
    forced, bare = timm_models.split_prefix(name)
    if not forced and name in list_model_names():
        return "torchvision", name
    if name not in UNSUPPORTED and timm_models.is_timm_model(bare):
        return "timm", bare
    if forced:
        raise TransferlabError(f"{opt('model', name)}: unknown model: timm has no {bare!r}; "
                               f"{_suggest(bare)}`transferlab models 'timm:*'` lists timm's names")
    raise TransferlabError(f"{opt('model', name)}: unknown model: neither torchvision nor timm has it; "
                           f"{_suggest(name)}`transferlab models` lists them")


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list_model_names() + timm_models.list_timm_models(), n=3)
    return f"did you mean {', '.join(close)}? " if close else ""


def _get(net: nn.Module, path: str) -> nn.Module:
    return net.get_submodule(path)


def _set(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def init_head(layer: nn.Linear) -> None:
    """Xavier-uniform weight, zero bias: the recipe's new output layer."""
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class TransferModel(nn.Module):
    """A torchvision or timm classifier with a named head and named stages.

    ``net`` is the unchanged torchvision or timm module, so its ``state_dict`` keys are
    the library's own. ``train()`` keeps the BatchNorm layers of frozen stages in
    eval mode, and all of them with ``keep_bn_stats``: they then normalise with the
    pretrained running statistics while their scale and shift still train.
    """

    is_folded = False  # True for the inference copies made by :func:`folded`

    def __init__(self, net: nn.Module, model_name: str, num_classes: int, family: Family | None = None) -> None:
        super().__init__()
        self.net = net
        self.model_name = model_name
        self.family = family or family_of(model_name)
        self.head_name = self.family.head or self.family.find_head(net)
        # a stage that holds nothing but the classifier is not a stage of the body
        params = [n for n, _ in net.named_parameters() if not _under(n, self.head_name)]
        self.stages: StageTable = [(n, p) for n, p in self.family.stages(net)
                                   if any(_under(q, prefix) for q in params for prefix in p)]
        self.frozen_stage = "none"
        self.keep_bn_stats = False
        self.reset_classifier(num_classes)
        self._check_ownership()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def head(self) -> nn.Linear:
        return _get(self.net, self.head_name)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def reset_classifier(self, num_classes: int) -> None:
        if self.family is TIMM:  # the model's own reset_classifier, then our init
            timm_models.reset_head(self.net, self.model_name, self.head_name, num_classes)
            init_head(self.head)
            return
        old = self.head
        if not isinstance(old, nn.Linear):
            raise TransferlabError(f"{self.model_name}: classifier {self.head_name} is not a Linear layer")
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        init_head(new)
        _set(self.net, self.head_name, new)

    def stage_of(self, param_name: str) -> str:
        """The stage owning a parameter or module of ``net`` ('head' for the classifier)."""
        if _under(param_name, self.head_name):
            return "head"
        for stage, prefixes in self.stages:
            if any(_under(param_name, p) for p in prefixes):
                return stage
        return "unassigned"

    def _check_ownership(self) -> None:
        orphans = [n for n, _ in self.net.named_parameters() if self.stage_of(n) == "unassigned"]
        if orphans:  # a stage table that misses parameters is a bug in FAMILIES
            raise RuntimeError(f"{self.model_name}: parameters outside every stage: {orphans[:5]}")

    def stage_names(self) -> list[str]:
        return ["none"] + [s for s, _ in self.stages] + ["body"]

    def frozen_stages(self, stage: str) -> list[str]:
        names = [s for s, _ in self.stages]
        if stage == "none":
            return []
        if stage == "body":
            return names
        check_freeze(self.model_name, stage, self.stage_names())
        return names[: names.index(stage) + 1]

    def freeze(self, stage: str = "body") -> TransferModel:
        """Freeze every stage up to and including ``stage`` ('none' unfreezes all)."""
        frozen = set(self.frozen_stages(stage))
        for name, param in self.net.named_parameters():
            param.requires_grad_(self.stage_of(name) not in frozen)
        self.frozen_stage = stage
        self.train(self.training)
        return self

    def unfreeze(self) -> TransferModel:
        return self.freeze("none")

    def frozen_modules(self) -> Iterator[nn.Module]:
        frozen = set(self.frozen_stages(self.frozen_stage))
        for name, module in self.net.named_modules():
            if name and self.stage_of(name) in frozen:
                yield module

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        if mode:
            for module in self.net.modules() if self.keep_bn_stats else self.frozen_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the classifier layer (pooled body features)."""
        captured: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.net(x)
        finally:
            handle.remove()
        return captured[0]


def folded(model: TransferModel) -> TransferModel:
    """An eval-mode copy of ``model`` for inference, each BatchNorm folded into the convolution before it.

    The outputs are the same up to float rounding, and a forward pass is about 1.8x faster
    on CPU. A net that ``torch.fx`` cannot trace is copied unfolded. A folded model is
    returned as it is, so callers that predict repeatedly fold once.
    """
    if model.is_folded:
        return model
    from torch.fx.experimental.optimization import fuse

    out = copy.deepcopy(model).eval()
    if model.family is TIMM:  # BatchNormAct2d and Conv2dSame: folded by data flow (transferlab.models.folding)
        from .folding import fold_by_dataflow

        cfg = getattr(out.net, "pretrained_cfg", None) or {}
        count = fold_by_dataflow(out.net, cfg["input_size"][-1] if cfg.get("fixed_input_size") else 32)
        log.debug("%s: %d BatchNorm layers folded", model.model_name, count)
    else:
        try:
            out.net = fuse(out.net, inplace=True)
        except Exception as exc:  # noqa: BLE001 - untraceable control flow: inference still works unfolded
            log.debug("%s: BatchNorm not folded (%s)", model.model_name, exc)
    out.is_folded = True
    device = next(out.parameters()).device
    return out.to(device, memory_format=torch.channels_last)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_freeze(model: str, freeze: str, stages: list[str] | None = None) -> None:
    """Raise unless ``freeze`` names a stage of ``model`` (or none/body)."""
    stages = stages or stage_names(model)
    if freeze not in stages:
        raise TransferlabError(f"{opt('freeze', freeze)}: unknown stage for {model}; choose from {', '.join(stages)}")


def stage_names(model: str) -> list[str]:
    """Stage names accepted by ``--freeze`` for ``model``."""
    try:
        with torch.device("meta"):  # structure only, no memory
            return create_model(model, num_classes=2, weights=None).stage_names()
    except NotImplementedError:  # a model whose constructor computes on tensors
        return create_model(model, num_classes=2, weights=None).stage_names()


def create_model(name: str, num_classes: int, weights: dict[str, torch.Tensor] | None = None) -> TransferModel:
    """Build ``name`` (torchvision's or timm's) with a new ``num_classes`` head; load a pretrained state dict
    into the body."""
    source, bare = model_source(name)
    if source == "timm":
        model = TransferModel(timm_models.create_net(bare), name, num_classes, family=TIMM)
        if weights is not None:
            load_body(model, weights)
        return model
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": False}
    net = get_model(name, weights=None, **kwargs)
    model = TransferModel(net, name, num_classes)
    if weights is not None:
        load_body(model, weights)
    return model


def load_body(model: TransferModel, state: dict[str, torch.Tensor]) -> None:
    """Load pretrained tensors into the body; the head keeps its fresh init unless shapes match."""
    own = model.net.state_dict()
    head = model.head_name
    if model.family is TIMM:
        state = timm_models.adapt_state(model.net, state, head)
    usable, skipped = {}, []
    for key, value in state.items():
        if key not in own:
            skipped.append(key)
        elif own[key].shape != value.shape:
            if not _under(key, head):
                raise TransferlabError(f"weights do not fit {model.model_name}: {key} has shape "
                                       f"{tuple(value.shape)}, expected {tuple(own[key].shape)}")
        else:
            usable[key] = value
    missing = [k for k in own if k not in usable and not _under(k, head)]
    if missing:
        raise TransferlabError(f"weights do not fit {model.model_name}: missing {len(missing)} tensors "
                               f"(e.g. {missing[0]}); are they for another architecture?")
    if skipped and not all(re.match(r"(AuxLogits|aux\d)\.", k) for k in skipped):
        log.warning("ignored %d tensors not in %s (e.g. %s)", len(skipped), model.model_name, skipped[0])
    model.net.load_state_dict(usable, strict=False)


def param_groups(model: TransferModel, lr: float, head_lr_mult: float, weight_decay: float,
                 decay_1d: bool = False, pretrained: bool = True) -> list[dict[str, Any]]:
    """Optimizer groups: body at ``lr``, head at ``lr * head_lr_mult``; frozen parameters left out.

    From scratch every layer is new, so the body gets the head rate too. Unless
    ``decay_1d``, biases and normalisation weights get no weight decay.
    """
    head_lr = lr * head_lr_mult
    body_lr = lr if pretrained else head_lr
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.net.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if model.stage_of(name) == "head" else "body"
        decay = decay_1d or param.ndim > 1
        buckets.setdefault((part, decay), []).append(param)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        groups.append({"name": f"{part}{'' if decay else '_no_decay'}", "params": params,
                       "lr": head_lr if part == "head" else body_lr,
                       "weight_decay": weight_decay if decay else 0.0})
    return groups
