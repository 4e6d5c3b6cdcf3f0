"""Probes: a head trained on cached body features, as a linear layer or a logistic regression (``head_fit``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_folder
from torch import nn

from transferlab.config import RunConfig, make_config
from transferlab.data import cache
from transferlab.data.datasets import resolve_data
from transferlab.errors import TransferlabError
from transferlab.models.model import create_model
from transferlab.models.weights import load_state_dict
from transferlab.train import features
from transferlab.train import trainer as train
from transferlab.train.probes import C_GRID, fit_logistic_head, logistic, probe_cv


def _features(n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    means = torch.randn(classes, d, generator=gen) * 2
    x = means[labels] + torch.randn(n, d, generator=gen) * 3 + 5  # off-centre and wide: the scaler matters
    return x, labels


@pytest.mark.parametrize("classes", [2, 4])
def test_the_head_computes_the_fitted_logistic_regression(classes):
    x, y = _features(120, 16, classes)
    head = nn.Linear(16, classes)
    c = fit_logistic_head(head, x, y, seed=0)
    assert c == probe_cv(x.numpy(), y.numpy(), 0)[2] and c in C_GRID
    reference = logistic(c).fit(x.numpy(), y.numpy())
    with torch.no_grad():
        probs = head(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(x.numpy()), atol=1e-4)


def test_the_strength_is_chosen_on_the_selection_rows_only():
    x, y = _features(80, 8, 2)
    noise = torch.randn(80, 8)  # features that say nothing: the weakest strength scores no better
    head = nn.Linear(8, 2)
    assert fit_logistic_head(head, x, y, seed=0, select=(noise, y)) == probe_cv(noise.numpy(), y.numpy(), 0)[2]


def test_a_class_missing_from_train_is_one_line():
    x, y = _features(40, 8, 2)
    with pytest.raises(TransferlabError, match="every class needs training images"):
        fit_logistic_head(nn.Linear(8, 3), x, y, seed=0)


@pytest.fixture(scope="module")
def colors(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("probes") / "colors", {"train": 6, "val": 3})


def test_head_warmup_as_a_logistic_regression(colors):
    from transferlab.workflows.finetuning import finetune

    result = finetune(make_config(data=str(colors), model="mobilenet_v2", image_size=64, batch_size=4, epochs=1,
                                  head_fit="logreg"), quiet=True)
    warmup = result.metrics["head_warmup"]
    assert warmup["fit"] == "logreg" and warmup["C"] in C_GRID and warmup["history"] == []
    assert warmup["accuracy"] >= 0.5 and result.config.head_fit == "logreg"


def test_a_logistic_probe_fits_once_and_keeps_it(colors):
    from transferlab.workflows.finetuning import finetune

    result = finetune(make_config(data=str(colors), model="mobilenet_v2", image_size=64, epochs=3, freeze="body",
                                  probe_views=2, head_fit="logreg"), quiet=True)
    assert result.metrics["epochs_trained"] == 1 and len(result.history) == 1
    assert result.history[0]["train_acc"] >= 0.9 and result.metrics["test_acc"] > 0.75  # of 6 test images, 5 at least


def test_head_fit_is_checked_in_one_line():
    with pytest.raises(TransferlabError, match="head_fit"):
        make_config(head_fit="lbfgs").validate()


def test_probe_run_trains_only_the_head(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 6, "val": 3})
    ds = resolve_data(str(data))
    trainer = train.Trainer(RunConfig(data=str(data), model="mobilenet_v2", freeze="body", epochs=3, image_size=48,
                                      batch_size=4, probe_views=2), quiet=True, dataset=ds)
    body_before = {k: v.clone() for k, v in create_model("mobilenet_v2", 2,
                                                         load_state_dict(trainer.weights.path)).net.state_dict().items()
                   if not k.startswith("classifier.1")}
    result = trainer.fit()
    assert result.metrics["probe"] and len(trainer.train_features) == 2
    after = result.model.net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body_before.items())
    assert len(result.history) == 3


def test_probe_features_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "colors", {"train": 6, "val": 3})
    config = RunConfig(data=str(data), model="mobilenet_v2", freeze="body", epochs=2, image_size=48, batch_size=4,
                       probe_views=2)
    first = train.Trainer(config, quiet=True).fit()
    entries = sorted((cache.cache_dir("features")).glob("*.safetensors"))
    assert len(entries) >= 3  # two training views and the test crops

    def no_body(*args, **kwargs):
        raise AssertionError("the body ran although its features were cached")

    monkeypatch.setattr(features, "body_features", no_body)
    second = train.Trainer(config, quiet=True).fit()
    assert second.history == [{**row, "wall_s": r2["wall_s"]} for row, r2 in zip(first.history, second.history)]
    # other crops, or no cache at all, run the body again
    with pytest.raises(AssertionError, match="the body ran"):
        train.Trainer(RunConfig(**{**config.to_dict(), "crop_scale": (0.5, 1.0)}), quiet=True).fit()
    with pytest.raises(AssertionError, match="the body ran"):
        train.Trainer(RunConfig(**{**config.to_dict(), "feature_cache": False}), quiet=True).fit()
