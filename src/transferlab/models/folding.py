"""BatchNorm folding by data flow, for networks ``torch.fx`` cannot fuse (timm's).

One forward pass on a small random input records which BatchNorm reads the output of the
convolution that ran just before it, with no other module in between. Each such BatchNorm
is folded into that convolution's weight and bias and replaced by what follows it in the
module (nothing for ``nn.BatchNorm2d``; the activation for timm's ``BatchNormAct2d``). The
folded net must then give the same outputs for that input, else every change is undone:
an in-place function between the two, or a second reader of the convolution's output,
cannot change a prediction.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["fold_by_dataflow", "foldable_pairs"]

log = logging.getLogger(__name__)


def _is_plain_conv(module: nn.Module) -> bool:
    """A Conv2d whose forward uses its weight as it is (timm's Conv2dSame only pads first)."""
    if not isinstance(module, nn.Conv2d):
        return False
    return type(module).forward is nn.Conv2d.forward or type(module).__name__ == "Conv2dSame"


def _is_foldable_bn(module: nn.Module) -> bool:
    if not isinstance(module, nn.BatchNorm2d) or not module.track_running_stats or module.running_mean is None:
        return False
    if type(module) is nn.BatchNorm2d:
        return True
    return type(module).__name__ == "BatchNormAct2d"  # timm: BN, then drop and act


@torch.no_grad()
def foldable_pairs(net: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(convolution, BatchNorm) module paths where the BatchNorm reads what the convolution just wrote, and
    the net's output for ``example``."""
    names = {module: name for name, module in net.named_modules()}
    leaves = [m for m in net.modules() if not list(m.children()) or _is_foldable_bn(m)]
    last: dict[str, object] = {"conv": None, "out": None}
    pairs: list[tuple[str, str]] = []

    def before(module: nn.Module, args: tuple[object, ...]) -> None:
        if _is_foldable_bn(module) and args and args[0] is last["out"] and last["conv"] is not None:
            pairs.append((names[last["conv"]], names[module]))
        last["conv"] = last["out"] = None

    def after(module: nn.Module, args: tuple[object, ...], output: object) -> None:
        if _is_plain_conv(module):
            last["conv"], last["out"] = module, output

    handles = [m.register_forward_pre_hook(before) for m in leaves]
    handles += [m.register_forward_hook(after) for m in leaves if _is_plain_conv(m)]
    try:
        output = net(example)
    finally:
        for handle in handles:
            handle.remove()
    return pairs, output


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    scale = bn.weight * inv_std if bn.affine else inv_std
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)


def _after_bn(bn: nn.Module) -> nn.Module:
    """What a BatchNorm module still does once its normalisation lives in the convolution."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    return nn.Sequential(bn.drop, bn.act)  # timm's BatchNormAct2d: BN, drop, act


def _set(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


@torch.no_grad()
def fold_by_dataflow(net: nn.Module, size: int = 32) -> int:
    """Fold every foldable BatchNorm of an eval-mode ``net`` in place; how many were folded.

    The folded net is checked against the unfolded one on a random ``size`` x ``size``
    input; on a mismatch every change is undone and 0 returned.
    """
    if net.training:
        raise ValueError("fold_by_dataflow folds running statistics: put the net in eval mode first")
    if not any(_is_foldable_bn(m) for m in net.modules()):
        return 0
    param = next(net.parameters())
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(param)
    try:
        pairs, expected = foldable_pairs(net, example)
    except Exception as exc:  # noqa: BLE001 - a net that refuses this input size: inference still works unfolded
        log.debug("BatchNorm not folded (%s)", exc)
        return 0
    undo = []
    for conv_name, bn_name in pairs:
        conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
        undo.append((conv, conv.weight, conv.bias, bn_name, bn))
        _fold(conv, bn)
        _set(net, bn_name, _after_bn(bn))
    got = net(example)
    scale = float(expected.abs().max()) or 1.0
    if torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * scale):
        return len(pairs)
    log.debug("BatchNorm folding changed the outputs (max diff %.3g); kept unfolded",
              float((got - expected).abs().max()))
    for conv, weight, bias, bn_name, bn in undo:
        conv.weight, conv.bias = weight, bias
        _set(net, bn_name, bn)
    return 0
