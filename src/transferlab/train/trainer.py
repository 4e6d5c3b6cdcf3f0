"""The Trainer, which owns a run: its model, data, loop, checkpoints and files.

The pieces are plain functions over explicit state: batches (:mod:`~transferlab.data.batches`),
optimisation (:mod:`~transferlab.train.optim`), the loop (:mod:`~transferlab.train.loop`), the head
warm-up (:mod:`~transferlab.train.head_fit`), checkpoints (:mod:`~transferlab.train.checkpoint`), the
final metrics (:mod:`~transferlab.train.outcome`) and the run directory (:mod:`~transferlab.rundir`).
The Trainer holds a frozen :class:`~transferlab.train.context.RunContext` (what the run is set up with)
and a :class:`~transferlab.train.checkpoint.RunState` (where it stands), and passes them on.

A run with ``out`` writes ``checkpoint.pt`` after every epoch (and every
``checkpoint_every`` steps): model, optimizer, scheduler, every random generator,
the epoch and step, and the running sums of the epoch in progress. Data order and
crops are a function of (seed, epoch), so ``resume=True`` continues mid-epoch and,
on CPU, ends with bit-identical weights and metrics. SIGINT/SIGTERM finish the
current step, write a checkpoint and raise :class:`TrainingInterrupted`. Under
torchrun every process trains its share of each global batch (see ``distributed``).
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .. import rundir
from ..config import AUTO, RunConfig
from ..console import Console
from ..data.batches import global_batches, prefetch_batches, probe_batches, process_seed, train_batches
from ..data.cache import decode
from ..data.datasets import Dataset, Split, dataset_for
from ..errors import TransferlabError, opt
from ..evaluation.metrics import DIGITS, class_weights, metric_block
from ..evaluation.selection import Selector
from ..inference.forward import eval_batch, predict_logits, resolve_device
from ..models.model import TransferModel, create_model, load_body
from ..models.weights import ResolvedWeights, load_state_dict, resolve_weights
from . import budget, checkpoint, distributed, head_fit, outcome
from .checkpoint import RunState
from .context import RunContext
from .loop import (
    EpochState,
    Step,
    StopRequest,
    TrainingDiverged,
    TrainingInterrupted,
    check_step_memory,
    deterministic_mode,
    train_one_epoch,
)
from .optim import build_optimizer, build_scheduler
from .result import PreparedData, RunResult

if TYPE_CHECKING:
    from ..ranking.result import Ranking

__all__ = ["Trainer"]

log = logging.getLogger(__name__)
_CONTEXT_NAMES = frozenset({f.name for f in fields(RunContext)} | {"probe"})


class Trainer:
    """Owns a run: data preparation, the loop, evaluation, checkpoints and files.

    With the whole body frozen (``freeze="body"``, a linear probe) the body runs
    once per image and view, and the head trains on the cached features.

    Under torchrun (``WORLD_SIZE`` > 1) every process trains its share of each global
    batch through DistributedDataParallel, BatchNorm uses global-batch statistics,
    evaluation and feature caching are sharded, and only rank 0 logs and writes files.

    ``model="auto"`` is resolved before a Trainer is made (:func:`transferlab.finetune`);
    ``ranking`` is the ranking that picked ``config.model``, recorded with the run.

    >>> result = Trainer(make_config(data="hotdog", epochs=3)).fit()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, quiet: bool = False, resume: bool = False,
                 dataset: Dataset | None = None, force: bool = False, overwrite: bool = False,
                 ranking: Ranking | None = None) -> None:
        config = config.validate(force=force)
        if resume and overwrite:
            raise TransferlabError(f"{opt('resume')} and {opt('overwrite')}: choose one (continue the run, or "
                                   "replace it)")
        if config.model == AUTO:
            raise TransferlabError(f"{opt('model', AUTO)} is chosen before a Trainer is made: use transferlab.finetune")
        dist = distributed.context()
        device = resolve_device(config.device)
        if dist.enabled:
            distributed.check_global_batch(config.batch_size, dist.world_size)
            if device.type == "cuda":
                if dist.local_rank >= torch.cuda.device_count():
                    raise TransferlabError(f"LOCAL_RANK {dist.local_rank}: only {torch.cuda.device_count()} "
                                           "GPUs here; start at most that many processes per node")
                device = torch.device("cuda", dist.local_rank)
        dataset = dataset.with_validation(config.carve_fraction, config.seed) if dataset else dataset_for(config)
        if config.select_metric == "roc_auc" and len(dataset.classes) != 2:
            raise TransferlabError(f"{opt('select_metric', 'roc_auc')}: ROC-AUC needs two classes, "
                                   f"{opt('data', config.data)} has {len(dataset.classes)}; choose loss, "
                                   "accuracy, balanced_accuracy or macro_f1")
        weights: ResolvedWeights = resolve_weights(config.model, config.weights)
        pre = weights.preprocessing.with_sizes(config.image_size, config.resize_size)
        if pre.resize_size < pre.crop_size:
            raise TransferlabError(f"{opt('resize_size', pre.resize_size)}: smaller than the crop "
                                   f"({opt('image_size', pre.crop_size)}); the crop would be padded with black")
        self.ctx = RunContext(config, dataset, weights, pre, replace(pre, crop_size=config.train_image_size or
                                                                      pre.crop_size),
                              device, dist, quiet or not dist.is_main, Path(config.out) if config.out else None)
        self.resume, self.force, self.overwrite = resume, force, overwrite
        self.ranking = ranking
        self.selector = Selector(config.selection, config.early_stopping)
        self.state = RunState(threads=torch.get_num_threads())
        self.start = time.perf_counter()
        self.console = Console(quiet=self.ctx.quiet)
        self.data: PreparedData | None = None  # set by prepare()
        self.test_paths: list[str] = []  # the test rows' files, relative to the data root
        self.predictions: list[dict[str, Any]] = []  # the final model on every test image
        self.body_passes = {"images": 0, "seconds": 0.0}  # what the body really computed for features
        self.train_features: list[torch.Tensor] = []  # a probe's cached features: one tensor per view
        self.eval_features: dict[str, torch.Tensor] = {}  # a probe's features of the val and test images
        self.warmup_block: dict[str, Any] | None = None  # the head warm-up's metrics on the eval split

    def __getattr__(self, name: str) -> Any:
        """The run's fixed facts (``config``, ``dataset``, ``pre``, ``device``, ...) are the context's."""
        if name in _CONTEXT_NAMES:
            return getattr(self.ctx, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def warmup(self) -> dict[str, Any] | None:
        """The head warm-up's record (its curve and its score on the eval split), once it ran."""
        return self.state.warmup

    def say(self, msg: str, *args: Any) -> None:
        if self.dist.is_main:
            self.console.say(msg, *args)

    # -- setup
    def prepare(self) -> TransferModel:
        """Build the model (weights loaded, new head, stages frozen) and decode the data into :attr:`data`.

        What :meth:`fit` does first; benchmarks and tests call it to get a run's model and data alone.
        """
        model = self._build_model()
        if not self.probe:  # a probe's body runs without autograd
            cfg = self.config
            check_step_memory(model, self.train_pre.crop_size, cfg.batch_size // self.dist.world_size, self.device,
                              cfg.precision, "train_image_size" if cfg.train_image_size else "image_size")
        self._prepare_data()
        return model

    def _build_model(self) -> TransferModel:
        torch.manual_seed(self.config.seed)
        state = load_state_dict(self.weights.path) if self.weights.path else None
        model = create_model(self.config.model, len(self.dataset.classes))
        if state is not None:
            try:
                load_body(model, state)
            except TransferlabError as exc:
                raise TransferlabError(f"{opt('weights', self.config.weights)}: {exc}") from None
        if self.config.head_init == "imagenet":
            from .head_init import init_head_from_imagenet

            init_head_from_imagenet(model, state, self.dataset, self.config.head_map, self.weights.categories,
                                    pre=self.pre)
        model.freeze(self.config.freeze)
        model.keep_bn_stats = self.config.bn_stats == "keep" and self.config.pretrained
        if self.dist.enabled and not self.probe:
            model.net = distributed.sync_batchnorm(model.net, self.device)
        return model.to(self.device, memory_format=torch.channels_last)

    def _decode(self, split: Split, desc: str) -> tuple[list[torch.Tensor], torch.Tensor, str]:
        decoded = decode(split.paths, self.pre, skip_bad=self.config.skip_bad_images, desc=desc, quiet=self.quiet)
        labels = torch.tensor([split.labels[i] for i in decoded.kept], dtype=torch.long)
        if len(decoded) == 0:
            raise TransferlabError(f"{opt('data', self.config.data)}: no usable images left in the "
                                   f"{desc.split()[-1]} split")
        if desc.endswith("test"):  # the files of the test rows, as the run records them
            self.test_paths = [self.dataset.relative(split.paths[i]) for i in decoded.kept]
        return decoded.images, labels, decoded.key

    def _prepare_data(self) -> None:
        # local rank 0 decodes first and fills the disk cache; the other processes then read it
        with distributed.local_main_first(self.dist):
            train_images, train_labels, train_key = self._decode(self.dataset.train, "decode train")
            test_images, test_labels, test_key = self._decode(self.dataset.test, "decode test")
            val = self._decode(self.dataset.val, "decode val") if self.dataset.val is not None else None
        self.data = PreparedData(train_images, train_labels, train_key, eval_batch(test_images, self.pre),
                                 test_labels, test_key)
        if val is not None:
            self.data.val_images, self.data.val_labels, self.data.val_key = eval_batch(val[0], self.pre), *val[1:]

    def elapsed(self) -> float:
        """Wall seconds of the run, those before a resume included."""
        return self.state.elapsed_before + time.perf_counter() - self.start

    def split_logits(self, model: TransferModel, split: str) -> torch.Tensor:
        """The model's logits on the eval crops of ``split`` ("val" or "test")."""
        num_classes = len(self.dataset.classes)
        images = self.data.eval_images(split)
        if self.probe:
            return head_fit.head_logits(self.ctx, model, self.eval_features[split])
        if self.dist.enabled:  # each process predicts its shard of the images
            index = distributed.shard(len(images), self.dist)
            local = (predict_logits(model, images[index], self.pre, self.device, quiet=self.quiet,
                                    precision=self.config.precision) if index else torch.empty(0, num_classes))
            return distributed.gather_rows(local, index, len(images))
        return predict_logits(model, images, self.pre, self.device, quiet=self.quiet, precision=self.config.precision)

    def score_split(self, logits: torch.Tensor, split: str) -> dict[str, Any]:
        return metric_block(logits, self.data.eval_labels(split), self.dataset.classes, split)

    def head_warmup(self, model: TransferModel) -> None:
        """Fit the new head on cached body features before the body moves (:func:`.head_fit.head_warmup`)."""
        record, line, block = head_fit.head_warmup(self.ctx, model, self.data, self._class_weights(), self.body_passes,
                                                   lambda n: self._stage("features", images=n))
        self.state.warmup = record
        self.warmup_block = block
        if line:
            self.say("%s", line)

    def _wrap(self, model: TransferModel) -> nn.Module:
        """What the loop trains: the model (or, probing, its head), in DistributedDataParallel on several processes."""
        target = model.head if self.probe else model
        if not self.dist.enabled:
            return target
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(target, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- the run
    def fit(self) -> RunResult:
        """Train and return the result; with ``out``, holding the run directory's lock throughout."""
        if not (self.run_dir and self.dist.is_main):
            return self._fit_in_group()
        with rundir.locked(self.run_dir):
            fresh = not any((self.run_dir / name).exists() for name in rundir.RUN_FILES)
            try:
                return self._fit_in_group()
            except BaseException:
                # failed before its first checkpoint: nothing to resume, so nothing is kept (a run it replaced
                # with --overwrite comes back)
                if fresh or (self.run_dir / rundir.REPLACED).is_dir():
                    rundir.discard_unstarted(self.run_dir)
                raise

    def _fit_in_group(self) -> RunResult:
        joined = False
        try:
            if self.config.deterministic:
                with deterministic_mode(self.state.threads):
                    joined = distributed.init_process_group(self.dist, self.device)
                    result = self._fit()
            else:
                joined = distributed.init_process_group(self.dist, self.device)
                result = self._fit()
        except (TrainingInterrupted, TrainingDiverged):
            if joined:  # every process stopped at the same step: leave the group cleanly
                distributed.destroy_process_group()
            raise
        if joined:
            distributed.destroy_process_group()
        return result

    def _fit(self) -> RunResult:
        cfg, state = self.config, self.state
        self.say("%s", self.dataset.describe())
        self.say("model %s, weights %s (%s), preprocessing crop %d resize %d %s, train crop %d, device %s %s%s",
                 cfg.model, self.weights.name, self.weights.source, self.pre.crop_size, self.pre.resize_size,
                 self.pre.interpolation, self.train_pre.crop_size, self.device, self.ctx.precision_name,
                 f", {self.dist.world_size} processes of {cfg.batch_size // self.dist.world_size} images"
                 if self.dist.enabled else "")
        if self.run_dir:
            rundir.check_run_dir(self.run_dir, cfg, self.resume, self.force, self.overwrite)
        model = self.prepare()
        images = sum(len(split) for split in (self.dataset.train, self.dataset.val, self.dataset.test) if split)
        self.state.stages = [{"stage": "decode", "images": images, "wall_s": round(self.elapsed(), 3)}]
        if self.probe:
            self.train_features, self.eval_features = head_fit.view_features(self.ctx, model, self.data,
                                                                             self.body_passes)
            self._stage("features", images=sum(len(f) for f in (*self.train_features, *self.eval_features.values())))
        n_train = len(self.data.train_labels)
        steps = len(global_batches(torch.arange(n_train), cfg.batch_size, self.dist.world_size))
        if steps == 0:
            raise TransferlabError(f"{opt('data', cfg.data)}: {n_train} training images cannot feed "
                                   f"{self.dist.world_size} processes; start fewer")
        optimizer = build_optimizer(cfg, model)
        scheduler = build_scheduler(cfg, optimizer, steps, epochs=self.planned_epochs)
        loss_fn = nn.CrossEntropyLoss(weight=self._class_weights(), reduction="none",
                                      label_smoothing=cfg.label_smoothing).to(self.device)
        step = Step(optimizer, scheduler, loss_fn, None if self.probe else self.train_pre, self.device,
                    cfg.loss_reduction, self.dist.world_size, cfg.precision, "probe_lr" if self.probe else "lr")
        resumed = False
        if self.run_dir:
            if self.dist.is_main:
                with rundir.writing(self.run_dir):
                    if self.overwrite:
                        rundir.clear(self.run_dir)
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    cfg.save(self.run_dir / rundir.CONFIG)
                    if self.ranking is not None:
                        self.ranking.write(self.run_dir / rundir.RANKING)
            resumed = self.resume_checkpoint(model, optimizer, scheduler)
            state = self.state
        if not resumed:
            if cfg.head_init == "imagenet":
                split = self.ctx.eval_split
                state.zero_shot = self.score_split(self.split_logits(model, split), split)["accuracy"]
                self.say("zero-shot (head from ImageNet rows, before training): %s_acc %.3f", split, state.zero_shot)
            if not self.probe:
                self.head_warmup(model)
            if self.dist.rank > 0:  # dropout masks differ between processes; rank 0 draws as one process would
                torch.manual_seed(process_seed(cfg.seed, self.dist.rank))
        net = self._wrap(model)
        last: tuple[int, torch.Tensor] | None = None  # (epoch, test logits) when the epochs are scored on test
        split = self.ctx.eval_split
        with StopRequest() as stop:
            if not resumed and self.state.warmup is not None:
                self._warmup_stage(model, optimizer, scheduler)  # a model and a checkpoint: a resume starts here
            if cfg.time_limit and state.plan is None:
                self._plan(model, steps)
            if distributed.all_reduce_sum([stop()])[0] and state.epochs_done == 0:
                raise self._interrupted(stop, "after the head warm-up")
            for epoch in range(state.epochs_done + 1, self.planned_epochs() + 1):
                if self.selector.stopped_early:  # resumed after the stop
                    break
                stats = self._train_epoch(net, model, step, epoch, steps, stop)
                state.images_seen += stats["seen"]
                state.train_seconds += stats["train_s"]
                logits = self.split_logits(model, split)
                block = self.score_split(logits, split)
                last = (epoch, logits) if split == "test" else None
                row = {"epoch": epoch, "train_loss": round(stats["train_loss"], DIGITS),
                       "train_acc": round(stats["train_acc"], DIGITS),
                       f"{split}_loss": block["nll"], f"{split}_acc": block["accuracy"]}
                if self.selector.metric not in (None, "loss", "accuracy"):
                    row[f"{split}_{self.selector.metric}"] = block.get(self.selector.metric)
                row["wall_s"] = round(self.elapsed(), 3)
                state.history.append(row)
                state.epochs_done, state.epoch_state = epoch, EpochState()
                stopping = self.selector.update(epoch, block, model.net)
                self.console.epoch(row, cfg.epochs, stats["train_images_per_s"])
                if self.run_dir:
                    self.save_checkpoint(model, optimizer, scheduler, epoch)
                    self.write_history()
                    if self.selector.metric is None or self.selector.best_epoch == epoch:
                        self.save_anytime_model(model, rundir.stage_name(epoch))
                if self._out_of_time(epoch):
                    break
                if stopping:
                    self.say("early stopping after epoch %d: no better %s %s for %d epochs", epoch, split,
                             self.selector.metric, self.selector.waited)
                    break
                if self.probe and cfg.head_fit == "logreg":  # fitted to convergence: more epochs would repeat it
                    break
                if distributed.all_reduce_sum([stop()])[0] and epoch < cfg.epochs:
                    raise self._interrupted(stop, f"after epoch {epoch}/{cfg.epochs}")
        facts = {"elapsed": self.elapsed, "throughput": outcome.throughput(self.ctx, state, self.body_passes),
                 "test_paths": self.test_paths, "ranking": self.ranking}
        metrics, self.predictions = outcome.final_metrics(
            self.ctx, model, self.data, state, self.selector, lambda s: self.split_logits(model, s), last, facts,
            lambda line: self.say("%s", line))
        kept = metrics["selection"]["best_epoch"]
        metrics["model_stage"] = rundir.WARMUP_STAGE if kept == 0 and state.warmup else f"epoch {kept}"
        if state.plan:
            metrics["time_limit"] = {**state.plan, "epochs_run": state.epochs_done, "wall_s": metrics["wall_s"]}
        self.console.done(metrics)
        if self.run_dir and self.dist.is_main:
            with rundir.writing(self.run_dir):
                rundir.finish(self.run_dir, model, self.dataset.classes, self.pre, cfg, metrics, self.predictions)
        return RunResult(self.run_dir, cfg, self.dataset.classes, metrics, state.history, model, self.predictions,
                         state.stages)

    def _class_weights(self) -> torch.Tensor | None:
        if self.config.class_weights == "none":
            return None
        return class_weights(self.data.train_labels, len(self.dataset.classes))

    def _train_epoch(self, net: nn.Module, model: TransferModel, step: Step, epoch: int, steps: int,
                     stop: StopRequest) -> dict[str, float]:
        """One epoch (or the rest of one, after a resume), checkpointing every ``checkpoint_every`` steps."""
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        state = self.state.epoch_state
        if self.probe:
            features = self.train_features[(epoch - 1) % len(self.train_features)]
            batches = probe_batches(features, self.data.train_labels, cfg.batch_size, cfg.seed, epoch, state.step,
                                    rank, world)
        else:
            batches = train_batches(self.data.train_images, self.data.train_labels, cfg.batch_size, self.train_pre,
                                    cfg.crop_scale, cfg.seed, epoch, state.step, rank, world,
                                    prefetch=prefetch_batches(self.device), region=self.ctx.crop_region,
                                    flips=cfg.flips)

        def after_step(state: EpochState, stopping: bool) -> None:
            done = (epoch - 1) * steps + state.step
            due = cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and state.step < steps
            if self.run_dir and (stopping or due):
                self.save_checkpoint(model, step.optimizer, step.scheduler, epoch - 1, step=state.step)
            if stopping:
                raise self._interrupted(stop, f"at epoch {epoch}/{cfg.epochs} step {state.step}/{steps}")

        if self.probe and cfg.head_fit == "logreg":
            stats, line = head_fit.logistic_epoch(self.ctx, model, self.train_features, self.data.train_labels)
            self.say("%s", line)
            return stats
        try:
            stats = train_one_epoch(net, batches, steps, step, state, desc=f"epoch {epoch}/{cfg.epochs}",
                                    quiet=self.quiet, stop=stop, after_step=after_step)
        except TrainingDiverged as exc:
            path = self.run_dir / rundir.CHECKPOINT if self.run_dir else None
            last = self.state.last_checkpoint
            kept = (f"the last good checkpoint (at {last}) is kept in {path}"
                    if self.run_dir and last else "no checkpoint was written")
            raise TrainingDiverged(f"{exc}; {kept}") from None
        return {**stats, "seen": state.seen}

    def _interrupted(self, stop: StopRequest, where: str) -> TrainingInterrupted:
        signum = stop.signum or signal.SIGTERM  # another process got the signal
        saved = f"checkpoint saved in {self.run_dir}" if self.run_dir else f"nothing saved (no {opt('out')})"
        return TrainingInterrupted(f"interrupted by {signal.Signals(signum).name} {where}; {saved}", signum,
                                   self.run_dir)

    # -- files
    def save_checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any,
                        epoch: int, step: int = 0) -> None:
        """Save what a resume needs after ``epoch`` whole epochs and ``step`` steps (:func:`.checkpoint.save`)."""
        checkpoint.save(self.ctx, self.state, model, optimizer, scheduler, self.selector, epoch, step, self.elapsed())

    def resume_checkpoint(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> bool:
        """Load the latest checkpoint into the model, optimizer, scheduler and this run's state; False if none."""
        path = self.run_dir / rundir.CHECKPOINT
        if not self.resume:
            return False
        if not path.is_file():
            self.say("resume: no checkpoint in %s, starting from epoch 1", self.run_dir)
            return False
        self.state = checkpoint.restore(self.ctx, path, model, optimizer, scheduler, self.selector,
                                        self.state.threads)
        self.start = time.perf_counter()
        self.write_history()  # the history of the checkpoint, not rows written after it
        self.say("resuming %s from the checkpoint at %s", self.run_dir, self.state.last_checkpoint)
        return True

    def write_history(self) -> None:
        """``metrics.jsonl``: the stage rows (decode, head warm-up), then one row per epoch."""
        if not self.dist.is_main:
            return
        with rundir.writing(self.run_dir):
            rundir.write_history(self.run_dir, [*self.state.stages, *self.state.history])

    def save_anytime_model(self, model: TransferModel, stage: str) -> None:
        """``model.safetensors`` of a stage better than those before it: usable while the run goes on."""
        if self.run_dir and self.dist.is_main:
            with rundir.writing(self.run_dir):
                rundir.save_model(model, self.run_dir / rundir.MODEL, self.dataset.classes, self.pre, self.config,
                                  stage=stage)

    # -- the stages and the clock
    def _stage(self, name: str, **values: Any) -> None:
        """A stage row of ``metrics.jsonl`` (decode, features, head warm-up), stamped with the run's clock."""
        self.state.stages.append({"stage": name, **values, "wall_s": round(self.elapsed(), 3)})

    def _warmup_stage(self, model: TransferModel, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """The head warm-up as a stage: its row, a candidate for the model kept (epoch 0), a model file at once
        and a checkpoint (a resume starts after it)."""
        split, block = self.ctx.eval_split, self.warmup_block
        self._stage("head_warmup", **{f"{split}_acc": block["accuracy"], f"{split}_loss": block["nll"]})
        if self.selector.metric is not None:
            self.selector.update(0, block, model.net)
        if self.run_dir:
            self.save_anytime_model(model, rundir.WARMUP_STAGE)
            self.save_checkpoint(model, optimizer, scheduler, 0)
            self.write_history()

    def planned_epochs(self) -> int:
        """The epochs this run trains: ``epochs``, or as many of them as its time limit's plan fits."""
        return self.state.plan["epochs"] if self.state.plan else self.config.epochs

    def _plan(self, model: TransferModel, steps: int) -> None:
        """Plan the epochs that fit in ``time_limit`` (:func:`.budget.plan_run`), from one timed step."""
        plan = budget.plan_run(self.ctx, model, self.data, steps, self.elapsed(), must_train=self.state.warmup is None)
        if self.ranking is not None and self.ranking.limit_s == self.config.time_limit and self.ranking.limit_why:
            plan["limit_why"] = self.ranking.limit_why  # the limit the ranking measured, where none was given
        self.state.plan = distributed.gather_objects(plan)[0]  # rank 0's plan for all
        self.say("%s", budget.describe(self.state.plan))

    def _out_of_time(self, epoch: int) -> bool:
        """After ``epoch``: whether another epoch, as long as this one, would end past the time limit."""
        plan = self.state.plan
        if not plan or epoch >= plan["epochs"]:
            return False
        took = budget.last_stage_s([*self.state.stages, *self.state.history])
        fits = distributed.gather_objects(budget.next_epoch_fits(plan, self.elapsed(), took))[0]
        if not fits:
            plan["stopped_after"] = epoch
            self.say("time limit: stopping after epoch %d of %d planned; the next (about %.0f s) would end past "
                     "%g s", epoch, plan["epochs"], took, plan["limit_s"])
        return not fits
