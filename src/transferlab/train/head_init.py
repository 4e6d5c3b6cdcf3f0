"""A new head built from the pretrained ImageNet classifier (``--head-init imagenet``).

Each target class gets a row (and bias) derived from the 1000-way ImageNet layer:

- a class mapped to ImageNet classes (``--head-map 'hotdog=934'``, by index or by
  name as the weights' metadata spells it) gets the mean of their rows and biases;
- an unmapped class (or one mapped to ``rest``) gets a row whose logit approximates
  the log-mean-exp of the logits of every ImageNet class no target class is mapped
  to: "some other ImageNet class" (see :func:`rest_row`);
- a class mapped to ``mean`` gets the mean of all 1000 rows and biases (data-free).

Built in: a class named hotdog / hot_dog / hot-dog maps to ImageNet's ``hotdog`` (934).
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Sequence

import torch

from ..data.datasets import Dataset
from ..data.transforms import Preprocessing
from ..errors import TransferlabError, opt, render
from ..models.model import TransferModel

HEAD_MAP_FORM = "'CLASS=IMAGENET[,IMAGENET...];...'"

__all__ = ["REST", "MEAN", "BUILTIN_HEAD_MAP", "CALIBRATION_IMAGES", "resolve_head_map", "rest_row",
           "init_head_from_imagenet"]

log = logging.getLogger(__name__)

REST = "rest"  # the log-mean-exp of the ImageNet classes nobody is mapped to (the default)
MEAN = "mean"  # the mean of all ImageNet rows
# normalised target class name -> ImageNet-1k indexes
BUILTIN_HEAD_MAP: dict[str, list[int]] = {"hotdog": [934]}
CALIBRATION_IMAGES = 64  # unlabeled training images used to place the rest row's linearisation

HeadPlan = list[list[int] | str]  # per target class: ImageNet indexes, REST or MEAN


def _normalised(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.lower())


def _index_of(item: str | int, categories: Sequence[str] | None, rows: int) -> int:
    if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
        index = int(item)
        if not 0 <= index < rows:
            raise TransferlabError(f"{opt('head_map')}: ImageNet index {index} is out of range 0-{rows - 1}")
        return index
    if categories is None:
        raise TransferlabError(f"{opt('head_map')}: {item!r}: these weights carry no class names; give ImageNet "
                               "indexes instead (e.g. hotdog=934)")
    found = [i for i, c in enumerate(categories) if c == item]
    if not found:
        found = [i for i, c in enumerate(categories) if c.lower() == item.lower()]
    if len(found) > 1:
        raise TransferlabError(f"{opt('head_map')}: {item!r} names several ImageNet classes "
                               f"({', '.join(map(str, found))}); give the index")
    if not found:
        close = difflib.get_close_matches(item, categories, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TransferlabError(f"{opt('head_map')}: {item!r} is not an ImageNet class name as the weights' metadata "
                               f"spells it{hint}")
    return found[0]


def resolve_head_map(classes: Sequence[str], head_map: dict[str, list[str | int]] | None,
                     categories: Sequence[str] | None, rows: int = 1000) -> HeadPlan:
    """What each target class starts from: ImageNet indexes, ``REST`` or ``MEAN``.

    Explicit ``head_map`` entries win; other classes use :data:`BUILTIN_HEAD_MAP`
    (when the weights are ImageNet-1k ordered) or ``REST``.
    """
    head_map = head_map or {}
    unknown = sorted(set(head_map) - set(classes))
    if unknown:
        raise TransferlabError(f"{opt('head_map')}: {', '.join(map(repr, unknown))} not a class of the dataset "
                               f"(classes: {', '.join(classes)})")
    builtin_ok = rows == 1000 and (categories is None or categories[934] == "hotdog")
    plan: HeadPlan = []
    for name in classes:
        items = head_map.get(name)
        if items is None:
            items = BUILTIN_HEAD_MAP.get(_normalised(name), []) if builtin_ok else []
        tokens = [i for i in items if isinstance(i, str) and i.lower() in (REST, MEAN)]
        if tokens and len(items) > 1:
            raise TransferlabError(f"{opt('head_map')}: {name}={','.join(map(str, items))}: {tokens[0]} stands alone")
        if tokens:
            plan.append(tokens[0].lower())
        elif items:
            plan.append(sorted({_index_of(i, categories, rows) for i in items}))
        else:
            plan.append(REST)
    if all(isinstance(p, str) for p in plan):
        raise TransferlabError(f"{opt('head_init', 'imagenet')}: no class of the dataset ({', '.join(classes)}) maps "
                               f"to an ImageNet class; add {opt('head_map', HEAD_MAP_FORM)} "
                               "(index or name, "
                               "e.g. 'hotdog=934;not_hotdog=')")
    return plan


def rest_row(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear stand-in for ``LME(z) = log mean_j exp(w_j . x + b_j)`` over the given rows.

    If the target classes are equally likely and each is a uniform mixture of its
    ImageNet classes, the right logit for "any of these classes" is the
    log-mean-exp of their logits. A linear layer cannot compute it, and the plain
    mean of the rows (Jensen's lower bound) falls short by the spread of the
    logits, several nats for a confident 1000-way model, so the class would never
    win. Instead we use the average tangent plane of ``LME`` over some images:
    slope = the mean over images of the softmax-weighted rows (the gradient of
    ``LME``), intercept = the value that matches ``LME`` on average over those
    images. With no images (``features`` None) the tangent is taken at zero
    features: softmax(bias)-weighted rows and ``LME(bias)``.
    """
    if features is None or len(features) == 0:
        row = bias.softmax(0) @ weight
        return row, bias.logsumexp(0) - math.log(len(bias))
    logits = features @ weight.T + bias
    row = logits.softmax(1).mean(0) @ weight
    lme = logits.logsumexp(1) - math.log(len(bias))
    return row, (lme - features @ row).mean()


def _calibration_features(model: TransferModel, dataset: Dataset, pre: Preprocessing) -> torch.Tensor:
    """Body features of up to ``CALIBRATION_IMAGES`` training images, evenly spread (labels unused)."""
    from ..data.cache import decode
    from ..inference.forward import body_features, eval_batch

    paths = dataset.train.paths
    step = max(1, len(paths) // CALIBRATION_IMAGES)
    chosen = list(paths[::step][:CALIBRATION_IMAGES])
    images = eval_batch(decode(chosen, pre, quiet=True, disk=False).images, pre)
    device = next(model.parameters()).device
    return body_features(model, images, pre, device).to(torch.float32)  # a folded copy: model stays as it is


@torch.no_grad()
def init_head_from_imagenet(model: TransferModel, pretrained_state: dict[str, torch.Tensor], dataset: Dataset,
                            head_map: dict[str, list[str | int]] | None, categories: tuple[str, ...] | None,
                            pre: Preprocessing | None = None) -> None:
    """Set ``model``'s head from the pretrained classifier rows (see the module docstring).

    ``pre`` is the preprocessing for the few unlabeled training images that place
    the ``rest`` row (default: the weights' own); they are read only when a class
    uses ``rest``.
    """
    key_w, key_b = f"{model.head_name}.weight", f"{model.head_name}.bias"
    if key_w not in pretrained_state:
        raise TransferlabError(f"{opt('head_init', 'imagenet')}: the weights have no {key_w}; use "
                               f"{opt('head_init', 'xavier')}")
    weight = pretrained_state[key_w].to(torch.float32)
    bias = pretrained_state.get(key_b, torch.zeros(len(weight))).to(torch.float32)
    head = model.head
    if weight.shape[1] != head.in_features:
        raise TransferlabError(f"{opt('head_init', 'imagenet')}: {key_w} has {weight.shape[1]} inputs, the head "
                               f"{head.in_features}; use {opt('head_init', 'xavier')}")
    if categories is not None and len(categories) != len(weight):
        categories = None  # names that do not describe these rows; indexes still work
    plan = resolve_head_map(dataset.classes, head_map, categories, rows=len(weight))
    mapped = sorted({i for p in plan if isinstance(p, list) for i in p})
    rest = torch.tensor([i for i in range(len(weight)) if i not in set(mapped)], dtype=torch.long)
    rows, biases = [], []
    rest_value: tuple[torch.Tensor, torch.Tensor] | None = None
    for name, entry in zip(dataset.classes, plan):
        if entry == MEAN:
            row, b = weight.mean(0), bias.mean()
        elif entry == REST:
            if rest_value is None:
                if pre is None:
                    from ..models.weights import resolve_weights

                    pre = resolve_weights(model.model_name, "none").preprocessing
                rest_value = rest_row(weight[rest], bias[rest], _calibration_features(model, dataset, pre))
            row, b = rest_value
        else:
            row, b = weight[entry].mean(0), bias[entry].mean()
        rows.append(row)
        biases.append(b)
        what = entry if isinstance(entry, str) else ", ".join(
            f"{i} {categories[i]}" if categories else str(i) for i in entry)
        log.info("head row for %s: %s", name, what)
    if sum(1 for p in plan if p == REST) > 1:
        log.warning("%s: several classes are unmapped and start from the same row; map them with %s to tell them "
                    "apart", render(opt("head_init", "imagenet")), render(opt("head_map")))
    head.weight.copy_(torch.stack(rows).to(head.weight))
    if head.bias is not None:
        head.bias.copy_(torch.stack(biases).to(head.bias))
