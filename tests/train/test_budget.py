"""Anytime runs and time limits: a usable model from the head warm-up on, stage rows in metrics.jsonl, and the
epochs planned to fit ``time_limit`` (train.budget)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from helpers import make_folder, make_image, run_cli

from transferlab import rundir
from transferlab.config import TIME_LIMIT_EPOCHS, make_config
from transferlab.errors import TransferlabError
from transferlab.inference.serve import create_app
from transferlab.reporting.run import write_run_report
from transferlab.train import budget
from transferlab.train import trainer as T
from transferlab.workflows.finetuning import finetune

TINY = {"model": "mobilenet_v2", "image_size": 32, "batch_size": 8, "head_warmup_epochs": 2}


@pytest.fixture
def colors(tmp_path):
    return make_folder(tmp_path / "colors", {"train": 8, "val": 4})


def _rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / rundir.HISTORY).read_text().splitlines()]


def test_the_plan_fits_what_the_clock_allows():
    kw = {"steps": 10, "step_s": 1.0, "eval_images": 30, "test_images": 30, "batch": 30}
    # an epoch: 10 steps of 1 s + 30 eval images at a third of a step's per-image cost = 10.33 s
    only_probe = budget.plan_epochs(60.0, 50.0, 3, **kw, must_train=False)
    assert only_probe["epochs"] == 0 and "warm-up's model is the run's" in only_probe["why"]
    some = budget.plan_epochs(60.0, 20.0, 5, **kw, must_train=False)
    assert some["epochs"] == 3 and some["epoch_s"] == pytest.approx(10.3, abs=0.1)  # 40 - reserve 6.1 s: 3 fit
    assert budget.plan_epochs(600.0, 20.0, 5, **kw, must_train=False)["epochs"] == 5  # never more than asked
    assert budget.plan_epochs(60.0, 59.0, 3, **kw, must_train=True)["epochs"] == 1  # no model yet: one epoch
    assert budget.next_epoch_fits(some, 40.0, 10.0) and not budget.next_epoch_fits(some, 45.0, 10.0)


def test_a_time_limit_is_a_duration_from_every_door(colors, tmp_path):
    assert make_config(data=str(colors), time_limit="1h30m").time_limit == 5400.0
    assert make_config(data=str(colors), time_limit=90).selection == "loss"  # a validation split keeps the best
    # the clock ends a run that names no --epochs: up to TIME_LIMIT_EPOCHS are planned; named ones are the most
    assert make_config(data=str(colors), time_limit=90).epochs == TIME_LIMIT_EPOCHS > make_config().epochs
    assert make_config(data=str(colors), time_limit=90, epochs=2).epochs == 2
    with pytest.raises(TransferlabError, match="time_limit='5x': not a duration"):
        make_config(data=str(colors), time_limit="5x")
    proc = run_cli("train", "--data", colors, "--out", tmp_path / "r", "--time-limit", "soon")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "transferlab: error: --time-limit soon: not a duration; give seconds (300) or a number with a unit: 90s, "
        "5m, 1.5h, 1h30m")
    proc = run_cli("train", "--data", colors, "--out", tmp_path / "r", "--time-limit", "0.5")
    assert proc.returncode == 2 and "between 1 second and a week" in proc.stderr


@pytest.mark.slow  # two fine-tunes and every command that reads a model
def test_a_run_stopped_after_its_warm_up_is_usable_and_resumes_after_it(colors, tmp_path, monkeypatch,
                                                                        no_run_reports):
    run = tmp_path / "run"
    config = make_config(data=str(colors), epochs=2, out=str(run), **TINY)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the machine stopped during the first fine-tuned epoch

    monkeypatch.setattr(T, "train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(config, quiet=True)
    monkeypatch.undo()
    assert rundir.model_stage(run) == "head warm-up" and not rundir.is_finished(run)
    assert [r["stage"] for r in _rows(run)] == ["decode", "features", "head_warmup"]
    assert all(r["wall_s"] > 0 for r in _rows(run))

    image = make_image(tmp_path / "x.png", (200, 40, 40))
    proc = run_cli("predict", run, image)
    assert proc.returncode == 0 and json.loads(proc.stdout)["label"] == "red", proc.stderr
    assert "the run is not finished; this model is its head warm-up's" in proc.stderr
    assert run_cli("evaluate", run, "--data", colors).returncode == 0
    proc = run_cli("export", run, "--format", "torchscript", "--out", tmp_path / "app" / "model.ts")
    assert proc.returncode == 0, proc.stderr
    assert TestClient(create_app(run, device="cpu")).get("/info").json()["stage"] == "head warm-up"

    proc = run_cli("train", "--data", colors, "--out", run, "--image-size", "32")
    assert proc.returncode == 2 and "an interrupted run is there (checkpoint.pt)" in proc.stderr

    warmups = []
    monkeypatch.setattr(T.Trainer, "head_warmup", lambda self, model: warmups.append(1))
    result = finetune(config, quiet=True, resume=True)
    assert not warmups and rundir.is_finished(run)  # resumed after the warm-up, not before it
    assert [r.get("stage", "epoch") for r in _rows(run)] == ["decode", "features", "head_warmup", "epoch", "epoch"]
    assert len(result.history) == 2


def test_a_limit_that_fits_only_the_warm_up_keeps_its_model(colors, tmp_path, monkeypatch, no_run_reports):
    monkeypatch.setattr(budget, "time_step", lambda *args: 1000.0)  # no epoch fits
    run = tmp_path / "run"
    result = finetune(make_config(data=str(colors), epochs=3, time_limit=60, out=str(run), **TINY), quiet=True)
    assert result.metrics["epochs_trained"] == 0 and result.metrics["model_stage"] == "head warm-up"
    assert result.to_pandas().empty and result.to_pandas().index.name == "epoch"  # no epoch: an empty table
    plan = result.metrics["time_limit"]
    assert plan["epochs"] == 0 and plan["limit_s"] == 60 and plan["wall_s"] < 60
    assert rundir.is_finished(run) and [r["stage"] for r in _rows(run)] == ["decode", "features", "head_warmup"]
    report = write_run_report(run).read_text()  # accuracy against the clock, and the plan against what happened
    assert "id='clock'" in report and "Time limit 60 s" in report and "0 of 3 epochs were planned" in report
    assert "The model kept is the head warm-up" in report


def test_an_epoch_that_would_overrun_is_not_started(colors, tmp_path, monkeypatch, no_run_reports):
    monkeypatch.setattr(budget, "time_step", lambda *args: 0.001)  # the plan: every epoch fits
    real = T.Trainer.elapsed

    def slow_first_epoch(self):  # then epoch 1 turns out to take 100 s
        return real(self) + (100.0 if self.state.images_seen else 0.0)

    monkeypatch.setattr(T.Trainer, "elapsed", slow_first_epoch)
    result = finetune(make_config(data=str(colors), epochs=3, time_limit=120, out=str(tmp_path / "run"), **TINY),
                      quiet=True)
    plan = result.metrics["time_limit"]
    assert plan["epochs"] == 3 and plan["stopped_after"] == 1 and result.metrics["epochs_trained"] == 1


@pytest.mark.slow  # a three-epoch fine-tune
def test_every_better_stage_replaces_the_model_file_and_only_a_better_one(colors, tmp_path, monkeypatch,
                                                                           no_run_reports):
    saved = []
    original = T.Trainer.save_anytime_model

    def record(self, model, stage):
        saved.append((stage, self.selector.best_epoch))
        original(self, model, stage)

    monkeypatch.setattr(T.Trainer, "save_anytime_model", record)
    config = make_config(data=str(colors), epochs=3, select_metric="loss", out=str(tmp_path / "run"), **TINY)
    result = finetune(config, quiet=True)
    assert saved[0] == ("head warm-up", 0)
    assert all(stage == f"epoch {best}" for stage, best in saved[1:])  # an epoch is saved only as the new best
    assert result.metrics["model_stage"] in {s for s, _ in saved}


def test_a_ranking_made_for_the_run_counts_against_its_time_limit(colors, tmp_path, monkeypatch, no_run_reports):
    from transferlab.ranking.result import Ranking
    from transferlab.workflows import finetuning

    monkeypatch.setattr(finetuning.ranker, "rank", lambda config, **kw: Ranking(
        config.data, 16, 2, config.epochs, None, [], "mobilenet_v2", "test", seconds=50.0))
    monkeypatch.setattr(budget, "time_step", lambda *args: 0.001)
    result = finetune(make_config(data=str(colors), epochs=1, time_limit=60, out=str(tmp_path / "r"),
                                  **{**TINY, "model": "auto"}), quiet=True)
    plan = result.metrics["time_limit"]
    assert plan["planned_at_s"] >= 50 and result.metrics["wall_s"] >= 50  # the ranking's 50 s are the run's
