"""A run's checkpoint: what a resume needs to continue bit-identically, written and read back.

:class:`RunState` is where training stands (the epoch and step, the running sums of the epoch in
progress, the history, the head warm-up, the counters); :func:`save` writes it with the model,
optimizer, scheduler, epoch selection (the best weights included) and every random generator, and
:func:`restore` loads all of it back, so a resumed run chooses exactly as an unbroken one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import rundir
from ..data.batches import process_seed
from ..errors import TransferlabError, first_line
from . import distributed
from .loop import EpochState

if TYPE_CHECKING:
    from ..evaluation.selection import Selector
    from ..models.model import TransferModel
    from .context import RunContext

__all__ = ["RunState", "save", "restore"]


@dataclass
class RunState:
    """Where training stands: everything a checkpoint carries besides the weights and the optimiser's state."""

    epochs_done: int = 0
    epoch_state: EpochState = field(default_factory=EpochState)  # the epoch in progress
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    warmup: dict[str, Any] | None = None  # the head warm-up: its curve and its score on the eval split
    zero_shot: float | None = None  # accuracy of the head made from ImageNet rows, before training
    images_seen: int = 0
    train_seconds: float = 0.0
    elapsed_before: float = 0.0  # wall seconds of the run before this process (resumed runs)
    threads: int = 0  # torch's intra-op threads (a deterministic run resumes with the same count)
    last_checkpoint: str | None = None  # "epoch E step S" of the last one written
    stages: list[dict[str, Any]] = field(default_factory=list)  # decode, head warm-up: a row each, with wall_s
    plan: dict[str, Any] | None = None  # a time-limited run's plan (train.budget), once made

    def to_checkpoint(self, epoch: int, step: int, elapsed: float, world_size: int) -> dict[str, Any]:
        """The checkpoint keys this state fills, after ``epoch`` whole epochs and ``step`` steps of the next."""
        return {"epoch": epoch, "step": step,
                "epoch_state": asdict(self.epoch_state) if step else asdict(EpochState()),
                "elapsed": elapsed, "history": json.dumps(self.history), "warmup": json.dumps(self.warmup),
                "zero_shot": self.zero_shot, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                "world_size": world_size, "threads": self.threads, "stages": json.dumps(self.stages),
                "plan": json.dumps(self.plan)}

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], threads: int) -> RunState:
        """The state a checkpoint holds (``threads``: this process's count, used where it recorded none)."""
        epoch, step = int(state["epoch"]), int(state.get("step", 0))
        return cls(epochs_done=epoch, epoch_state=EpochState(**state.get("epoch_state", {})),
                   history=json.loads(state["history"]), warmup=json.loads(state.get("warmup") or "null"),
                   stages=json.loads(state.get("stages") or "[]"), plan=json.loads(state.get("plan") or "null"),
                   zero_shot=state.get("zero_shot"), images_seen=int(state.get("images_seen", 0)),
                   train_seconds=float(state.get("train_seconds", 0.0)), elapsed_before=float(state["elapsed"]),
                   threads=int(state.get("threads") or threads), last_checkpoint=rundir.position(epoch, step))


def save(ctx: RunContext, state: RunState, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
         selector: Selector, epoch: int, step: int, elapsed: float) -> None:
    """Save what a resume needs after ``epoch`` whole epochs and ``step`` steps of the next one.

    Every process calls it (their random states are gathered); rank 0 writes into ``ctx.run_dir``.
    The previous checkpoint stays in place until the new one is complete.
    """
    rng = distributed.gather_objects(rundir.rng_state(ctx.device))
    state.last_checkpoint = rundir.position(epoch, step)
    if not ctx.dist.is_main:
        return
    saved = {"model": model.net.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), **state.to_checkpoint(epoch, step, elapsed, ctx.dist.world_size),
             "selection": selector.state_dict(), "rng": rng, "torch_rng": rng[0]["torch"]}
    with rundir.writing(ctx.run_dir):
        rundir.write_checkpoint(ctx.run_dir, saved)


def restore(ctx: RunContext, path: Path, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
            selector: Selector, threads: int) -> RunState:
    """Load the checkpoint at ``path`` into the model, optimizer, scheduler and selector; the state it held.

    Every random generator is set as it was (another process count: each rank's own dropout stream);
    a deterministic run takes the thread count it was checkpointed with.
    """
    saved = rundir.read_checkpoint(path)
    try:
        model.net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = RunState.from_checkpoint(saved, threads)
        rng = saved.get("rng") or [{"torch": saved["torch_rng"]}]
    except Exception as exc:  # noqa: BLE001
        raise TransferlabError(f"{path}: cannot resume from this checkpoint ({first_line(exc)}); "
                               "delete it to start over") from None
    dist = ctx.dist
    if len(rng) == dist.world_size or dist.rank == 0:
        rundir.set_rng_state(rng[dist.rank], ctx.device)
    else:  # another process count: only the dropout stream of the other ranks differs
        torch.manual_seed(process_seed(ctx.config.seed, dist.rank, state.epochs_done))
    if ctx.config.deterministic and saved.get("threads"):
        torch.set_num_threads(state.threads)
    else:
        state.threads = threads
    if saved.get("selection"):
        selector.load_state_dict(saved["selection"])
    return state
