"""A run's checkpoint: what a resume needs to continue bit-identically, written and read back.

Model, optimizer, scheduler, every random generator, the epoch and step, the running sums of
the epoch in progress, the history, the head warm-up and the epoch selection (the best
weights included), so a resumed run chooses exactly as an unbroken one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from .. import rundir
from ..data.batches import process_seed
from ..errors import TransferlabError
from . import distributed
from .loop import EpochState

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["Checkpoints"]


class Checkpoints:
    """The checkpoint half of :class:`~transferlab.train.trainer.Trainer`: write one, resume from one."""

    def save_checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                        epoch: int, step: int = 0) -> None:
        """Save what a resume needs after ``epoch`` whole epochs and ``step`` steps of the next one.

        Every process calls it (their random states are gathered); rank 0 writes. The
        previous checkpoint stays in place until the new one is complete.
        """
        rng = distributed.gather_objects(rundir.rng_state(self.device))
        self.last_checkpoint = rundir.position(epoch, step)
        if not self.dist.is_main:
            return
        state = {"model": model.net.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                 "epoch_state": asdict(self.epoch_state) if step else asdict(EpochState()),
                 "elapsed": self.elapsed(), "history": json.dumps(self.history),
                 "selection": self.selector.state_dict(), "warmup": json.dumps(self.warmup),
                 "zero_shot": self.zero_shot, "images_seen": self.images_seen, "train_seconds": self.train_seconds,
                 "world_size": self.dist.world_size, "threads": self.threads, "rng": rng,
                 "torch_rng": rng[0]["torch"]}
        with rundir.writing(self.run_dir):
            rundir.write_checkpoint(self.run_dir, state)

    def resume_checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> bool:
        """Load the latest checkpoint into the model, optimizer, scheduler and this trainer; False if none."""
        path = self.run_dir / rundir.CHECKPOINT
        if not self.resume:
            return False
        if not path.is_file():
            self.say("resume: no checkpoint in %s, starting from epoch 1", self.run_dir)
            return False
        state = rundir.read_checkpoint(path)
        try:
            model.net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            epoch, step = int(state["epoch"]), int(state.get("step", 0))
            history = json.loads(state["history"])
            epoch_state = EpochState(**state.get("epoch_state", {}))
            rng = state.get("rng") or [{"torch": state["torch_rng"]}]
        except Exception as exc:  # noqa: BLE001
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]  # an empty file: EOFError()
            raise TransferlabError(f"{path}: cannot resume from this checkpoint ({reason}); "
                                   "delete it to start over") from None
        if len(rng) == self.dist.world_size or self.dist.rank == 0:
            rundir.set_rng_state(rng[self.dist.rank], self.device)
        else:  # another process count: only the dropout stream of the other ranks differs
            torch.manual_seed(process_seed(self.config.seed, self.dist.rank, epoch))
        if self.config.deterministic and state.get("threads"):
            self.threads = int(state["threads"])
            torch.set_num_threads(self.threads)
        self.history = history
        self.epochs_done, self.epoch_state = epoch, epoch_state
        self.zero_shot = state.get("zero_shot")
        if state.get("selection"):
            self.selector.load_state_dict(state["selection"])
        self.warmup = json.loads(state.get("warmup") or "null")
        self.images_seen = int(state.get("images_seen", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.elapsed_before = float(state["elapsed"])
        self.start = time.perf_counter()
        self.last_checkpoint = rundir.position(epoch, step)
        self.write_history()  # the history of the checkpoint, not rows written after it
        self.say("resuming %s from the checkpoint at %s", self.run_dir, self.last_checkpoint)
        return True
