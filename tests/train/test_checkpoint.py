"""Checkpoints in one process: an interrupted run resumes to an uninterrupted one's weights; a diverging run
stops and keeps its last good checkpoint. (Killed and signalled processes: tests/process/test_resume.py.)"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, make_folder, run_cli

from transferlab import rundir
from transferlab.config import make_config
from transferlab.train import trainer as T
from transferlab.workflows.finetuning import finetune


@pytest.mark.slow  # three fine-tunes: whole, interrupted, resumed (tests/train/test_state.py has the pieces)
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch, no_run_reports):
    data = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    base = make_config(data=str(data), model="mobilenet_v2", image_size=32, batch_size=8, epochs=3,
                       head_warmup_epochs=2)
    full = finetune(base, out=str(tmp_path / "full"), quiet=True)

    original = T.Trainer.save_checkpoint

    def crash_after_epoch_2(self, model, optimizer, scheduler, epoch):
        original(self, model, optimizer, scheduler, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(T.Trainer, "save_checkpoint", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune(base, out=str(tmp_path / "part"), quiet=True)
    monkeypatch.setattr(T.Trainer, "save_checkpoint", original)
    assert (tmp_path / "part" / "checkpoint.pt").exists() and not (tmp_path / "part" / "metrics.json").exists()
    resumed = finetune(base, out=str(tmp_path / "part"), quiet=True, resume=True)
    for (name, a), (_, b) in zip(full.model.net.state_dict().items(), resumed.model.net.state_dict().items()):
        assert torch.equal(a, b), name
    assert [r["test_acc"] for r in resumed.history] == [r["test_acc"] for r in full.history]
    assert len(rundir.RunDir(tmp_path / "part").history()) == 3  # the epoch rows, after the stage rows


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 4, "val": 2})
    run = tmp_path / "run"
    proc = run_cli("train", "--data", data, "--model", "mobilenet_v2", "--image-size", 32, "--batch-size", 4,
                   "--epochs", 2, "--checkpoint-every", 1, "--deterministic", "--quiet", "--lr", "1e30", "--force",
                   "--out", run)
    line = assert_one_line_error(proc, "training diverged: loss is nan")
    assert line.startswith("transferlab: error: training diverged: loss is nan"), line
    assert f"the last good checkpoint (at epoch 1 step 1) is kept in {run / 'checkpoint.pt'}" in line
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert (int(state["epoch"]), int(state["step"])) == (0, 1)  # written after step 1; step 2's loss was not finite
    assert not (run / "metrics.json").exists()  # not finished; the head warm-up's model stays usable
    assert rundir.model_stage(run) == "head warm-up"
