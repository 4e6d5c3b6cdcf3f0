"""The training engine as explicit state and plain functions: each piece works without a Trainer."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from transferlab import rundir
from transferlab.config import make_config
from transferlab.data.datasets import resolve_data
from transferlab.evaluation.selection import Selector
from transferlab.models.model import create_model
from transferlab.models.weights import resolve_weights
from transferlab.train import checkpoint, head_fit, outcome
from transferlab.train.checkpoint import RunState
from transferlab.train.context import RunContext
from transferlab.train.distributed import Context
from transferlab.train.loop import EpochState
from transferlab.train.optim import build_optimizer, build_scheduler
from transferlab.train.result import PreparedData
from transferlab.train.trainer import Trainer


def _context(folder, tmp_path, **overrides) -> RunContext:
    config = make_config(data=str(folder), model="mobilenet_v2", weights="none", image_size=32, batch_size=4,
                         out=str(tmp_path / "run"), **overrides)
    weights = resolve_weights(config.model, config.weights)
    pre = weights.preprocessing.with_sizes(32, 36)
    dataset = resolve_data(config.data, config.seed, config.test_fraction)
    return RunContext(config, dataset, weights, pre, pre, torch.device("cpu"), Context(), quiet=True,
                      run_dir=tmp_path / "run")


def _data(n_train: int = 8, n_test: int = 6) -> PreparedData:
    gen = torch.Generator().manual_seed(0)
    train = [torch.randint(0, 256, (3, 36, 40), generator=gen, dtype=torch.uint8) for _ in range(n_train)]
    test = torch.randint(0, 256, (n_test, 3, 32, 32), generator=gen, dtype=torch.uint8)
    return PreparedData(train, torch.arange(n_train) % 2, "train-key", test, torch.arange(n_test) % 2, "test-key")


def test_the_trainer_has_no_mixins():
    assert Trainer.__bases__ == (object,)


def test_run_state_round_trips_through_checkpoint_keys():
    state = RunState(epochs_done=2, epoch_state=EpochState(step=3, loss_sum=1.5, correct=7, seen=12, seconds=0.25),
                     history=[{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}],
                     warmup={"split": "val", "accuracy": 0.8}, zero_shot=0.6, images_seen=40, train_seconds=3.5,
                     threads=2, stages=[{"stage": "decode", "wall_s": 1.0}], plan={"epochs": 2, "limit_s": 60.0})
    keys = state.to_checkpoint(epoch=2, step=3, elapsed=9.5, world_size=1)
    # the keys of checkpoints written before the Trainer lost its mixins, the stages and the plan, and no others
    assert set(keys) == {"epoch", "step", "epoch_state", "elapsed", "history", "warmup", "zero_shot", "images_seen",
                         "train_seconds", "world_size", "threads", "stages", "plan"}
    older = {k: v for k, v in keys.items() if k not in ("stages", "plan")}  # a checkpoint from before stages
    assert RunState.from_checkpoint(older, threads=1).stages == []
    assert json.loads(keys["history"]) == state.history
    back = RunState.from_checkpoint(keys, threads=1)
    assert back == dataclasses.replace(state, elapsed_before=9.5, last_checkpoint="epoch 3 step 3")
    # at an epoch boundary the running sums are not carried
    assert RunState.from_checkpoint(state.to_checkpoint(2, 0, 1.0, 1), 1).epoch_state == EpochState()


def test_save_then_restore_brings_back_weights_optimizer_selection_and_random_streams(image_folder, tmp_path):
    ctx = _context(image_folder, tmp_path, epochs=3, select_metric="accuracy")
    ctx.run_dir.mkdir()
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 2)
    optimizer = build_optimizer(ctx.config, model)
    scheduler = build_scheduler(ctx.config, optimizer, steps_per_epoch=2)
    selector = Selector(ctx.config.selection, ctx.config.early_stopping)
    selector.update(1, {"accuracy": 0.75, "nll": 0.5}, model.net)
    state = RunState(epochs_done=1, history=[{"epoch": 1}], threads=1)
    checkpoint.save(ctx, state, model, optimizer, scheduler, selector, epoch=1, step=0, elapsed=4.0)
    assert state.last_checkpoint == "end of epoch 1"
    expected_draw = torch.rand(3)

    torch.manual_seed(123)  # another stream and other weights: restore must bring both back
    other = create_model("mobilenet_v2", 2)
    other_optimizer = build_optimizer(ctx.config, other)
    other_scheduler = build_scheduler(ctx.config, other_optimizer, steps_per_epoch=2)
    other_selector = Selector(ctx.config.selection, ctx.config.early_stopping)
    back = checkpoint.restore(ctx, ctx.run_dir / rundir.CHECKPOINT, other, other_optimizer, other_scheduler,
                              other_selector, threads=1)
    assert back.epochs_done == 1 and back.history == [{"epoch": 1}] and back.elapsed_before == 4.0
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), other.net.state_dict().values()))
    mine, theirs = selector.state_dict(), other_selector.state_dict()
    assert mine.keys() == theirs.keys() and other_selector.summary(1) == selector.summary(1)
    assert all(torch.equal(a, b) for a, b in zip(mine["best_state"].values(), theirs["best_state"].values()))
    assert torch.equal(torch.rand(3), expected_draw)


def test_restore_of_a_damaged_checkpoint_is_one_line(image_folder, tmp_path):
    ctx = _context(image_folder, tmp_path)
    ctx.run_dir.mkdir()
    path = ctx.run_dir / rundir.CHECKPOINT
    torch.save({"model": {}, "epoch": 1}, path)
    model = create_model("mobilenet_v2", 2)
    optimizer = build_optimizer(ctx.config, model)
    with pytest.raises(Exception, match="cannot resume from this checkpoint .*delete it to start over"):
        checkpoint.restore(ctx, path, model, optimizer, build_scheduler(ctx.config, optimizer, 1),
                           Selector(ctx.config.selection, ctx.config.early_stopping), threads=1)


def test_final_metrics_score_the_given_logits_once_and_keep_the_selected_epoch(image_folder, tmp_path):
    ctx = _context(image_folder, tmp_path, epochs=2)
    model = create_model("mobilenet_v2", 2)
    data = _data()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    asked = []

    def split_logits(split: str) -> torch.Tensor:
        asked.append(split)
        return logits

    state = RunState(epochs_done=2, warmup={"split": "test", "accuracy": 0.5}, zero_shot=0.4)
    lines = []
    facts = {"elapsed": lambda: 12.3456, "throughput": {"train_images_per_s": 10.0},
             "test_paths": [f"t{i}.png" for i in range(6)], "ranking": None}
    metrics, predictions = outcome.final_metrics(ctx, model, data, state, Selector(None, None), split_logits, None,
                                                 facts, lines.append)
    # labels 0,1,0,1,0,1 against predictions 0,1,0,0,0,1: five of six right
    assert metrics["test_acc"] == round(5 / 6, 4) and metrics["epochs_trained"] == 2 and metrics["wall_s"] == 12.346
    assert metrics["head_warmup_acc"] == 0.5 and metrics["zero_shot_acc"] == 0.4
    assert asked == ["test"] and len(predictions) == 6 and predictions[3]["correct"] == 0
    assert lines and lines[0].startswith("keeping the last epoch")


def test_a_probe_epoch_of_logistic_regression_needs_no_trainer(image_folder, tmp_path):
    ctx = _context(image_folder, tmp_path, freeze="body", head_fit="logreg")
    model = create_model("mobilenet_v2", 2)
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(20) % 2
    views = [torch.randn(20, model.head.in_features, generator=gen) + labels[:, None] * 3 for _ in range(2)]
    stats, line = head_fit.logistic_epoch(ctx, model, views, labels)
    assert stats["seen"] == 40 and stats["train_acc"] > 0.9
    assert line.startswith("probe: logistic regression on 2 cached views")
