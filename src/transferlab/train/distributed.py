"""Training on several processes with torchrun: the process group, data shards, reductions, BatchNorm, launch.

torchrun (or ``transferlab train --nproc N``, which calls torchrun's own launcher)
starts one process per device and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``. :func:`context` reads them; the trainer joins
the group (gloo on CPU, NCCL on CUDA), wraps the model in
``DistributedDataParallel`` and gives each process its share of every global batch.

BatchNorm layers normalise with the statistics of the *global* batch, as one
process would: ``nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` on CPU
(where ``nn.SyncBatchNorm`` refuses to run).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TransferlabError, first_line, opt

__all__ = ["Context", "context", "init_process_group", "destroy_process_group", "barrier", "local_main_first",
           "all_reduce_sum", "gather_rows", "gather_objects", "shard", "sync_batchnorm", "GlobalBatchNorm",
           "check_global_batch", "launch", "RESUME_ENV"]

log = logging.getLogger(__name__)

# Set by ``transferlab train --nproc N`` for its workers: the command that resumes the run.
RESUME_ENV = "TRANSFERLAB_RESUME_COMMAND"


@dataclass(frozen=True)
class Context:
    """Where this process sits in the job: its global rank, its rank on this node and the process count."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context() -> Context:
    """The torchrun environment of this process (one process when it is not set)."""
    try:
        ctx = Context(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                      int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        raise TransferlabError("RANK, LOCAL_RANK and WORLD_SIZE must be integers; let torchrun set them") from None
    if not 0 <= ctx.rank < ctx.world_size:
        raise TransferlabError(f"RANK={ctx.rank} is outside WORLD_SIZE={ctx.world_size}; let torchrun set them")
    return ctx


def init_process_group(ctx: Context, device: torch.device) -> bool:
    """Join the job's process group (NCCL for CUDA, gloo for CPU); False if single-process or already joined."""
    if not ctx.enabled or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    except (ValueError, RuntimeError) as exc:
        raise TransferlabError(f"cannot join the torchrun process group ({first_line(exc)}); "
                               "start the run with torchrun or `transferlab train --nproc N`") from None
    return True


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``--batch-size`` is the global batch: each of the ``world_size`` processes takes an equal part."""
    if batch_size % world_size:
        raise TransferlabError(f"{opt('batch_size', batch_size)} is the global batch and must be divisible by the "
                               f"{world_size} processes; use e.g. {opt('batch_size')} "
                               f"{-(-batch_size // world_size) * world_size}")


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


@contextmanager
def local_main_first(ctx: Context) -> Iterator[None]:
    """Local rank 0 of every node runs the block first (filling caches); the others then run it."""
    if ctx.enabled and ctx.local_rank != 0:
        barrier()
    yield
    if ctx.enabled and ctx.local_rank == 0:
        barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums over all processes (float64), or ``values`` unchanged in a single process."""
    if not _active():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tensor.tolist()


def shard(n: int, ctx: Context) -> list[int]:
    """The indices of ``range(n)`` this process handles: every ``world_size``-th one from its rank."""
    return list(range(ctx.rank, n, ctx.world_size))


def gather_rows(local: torch.Tensor, indices: Sequence[int], n: int) -> torch.Tensor:
    """Put each process's rows (at ``indices`` of an ``n``-row tensor) together on every process.

    Rows are placed into zeros and summed across processes, so the result is exact.
    """
    if not _active():
        return local
    full = torch.zeros((n, *local.shape[1:]), dtype=local.dtype, device=_comm_device())
    if len(indices):
        full[torch.as_tensor(list(indices), device=full.device)] = local.to(full.device)
    dist.all_reduce(full)
    return full.to(local.device)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, by rank (a list of one in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- BatchNorm over the global batch


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of each input is the sum of the gradients of every output."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every process's share of the batch, for gloo (CPU).

    Mean and variance come from two differentiable all-reduces (sums, then squared
    deviations from the global mean), so forward and backward equal one process
    holding the whole batch, up to float rounding. Outside training, or in a
    single process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _active()):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / total
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            out = out * self.weight.view(shape)
        if self.bias is not None:
            out = out + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        return out.to(input.dtype)


class GlobalBatchNormAct(GlobalBatchNorm):
    """:class:`GlobalBatchNorm` followed by the dropout and activation of timm's ``BatchNormAct2d`` it replaces."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


def _norm_act(module: nn.Module) -> bool:
    """timm's BatchNorm with its activation inside (``BatchNormAct2d``): converting it must keep ``act``."""
    return hasattr(module, "act") and hasattr(module, "drop") and isinstance(module, nn.modules.batchnorm._BatchNorm)


def _to_global_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        cls = GlobalBatchNormAct if _norm_act(module) else GlobalBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine,
                  module.track_running_stats, bias=module.bias is not None)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child))
    return out


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` normalising over the global batch (same parameters and buffers)."""
    if device.type == "cuda":
        if any(_norm_act(m) for m in module.modules()):  # timm's converter keeps their activations
            from timm.layers import convert_sync_batchnorm

            return convert_sync_batchnorm(module)
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


# --------------------------------------------------------------------------- launching


def launch(nproc: int, argv: Sequence[str], resume_command: str) -> int:
    """Run ``transferlab <argv>`` in ``nproc`` local processes through torchrun's launcher; the exit status.

    Workers print their own errors (rank 0 only); torchrun's failure report is not repeated.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[RESUME_ENV] = resume_command
    args = get_args_parser().parse_args(["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc),
                                         "--module", "transferlab", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        failures = exc.failures
        code = failures[min(failures)].exitcode
        return code if code > 0 else 128 - code  # a negative code is a signal number
    except SignalException as exc:
        return 128 + int(exc.sigval)
    finally:
        os.environ.pop(RESUME_ENV, None)
        sys.stdout.flush()
    return 0
