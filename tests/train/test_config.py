import json

import pytest

from transferlab.config import PRESETS, RunConfig, make_config
from transferlab.errors import TransferlabError


def test_round_trip(tmp_path):
    config = make_config(data="elpv", epochs=2, crop_scale=(0.5, 1.0), image_size=160)
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["crop_scale"] == [0.5, 1.0]


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(TransferlabError, match="unknown config key.*learning_rate"):
        RunConfig.from_dict({"learning_rate": 0.1})


def test_d2l_preset_is_the_seed_recipe():
    c = make_config("d2l")
    assert (c.optimizer, c.momentum, c.weight_decay, c.batch_size, c.epochs) == ("sgd", 0.0, 1e-3, 128, 5)
    assert (c.lr, c.head_lr_mult, c.loss_reduction, c.schedule) == (5e-5, 10.0, "sum", "constant")
    assert c.decay_1d and c.crop_scale == (0.08, 1.0) and c.head_warmup_epochs == 0
    assert make_config("d2l", epochs=2).epochs == 2  # explicit options win
    assert set(PRESETS) >= {"default", "d2l"}


@pytest.mark.parametrize("field,value,flag", [("epochs", 0, "--epochs"), ("lr", -1.0, "--lr"),
                                              ("batch_size", 0, "--batch-size"), ("head_lr_mult", 0, "--head-lr-mult")])
def test_non_positive_values_name_the_option(field, value, flag):
    with pytest.raises(TransferlabError, match=f"^{field}= ") as info:  # the parameter, from Python
        make_config(**{field: value})
    assert info.value.cli_message().startswith(f"{flag} ")  # the flag, on the command line


@pytest.mark.parametrize("field,value,flag", [("precision", "fp16", "--precision"),
                                              ("bn_stats", "freeze", "--bn-stats"),
                                              ("crop_region", "middle", "--crop-region"),
                                              ("flips", "v", "--flips"),
                                              ("probe_lr", 0.0, "--probe-lr")])
def test_unknown_choices_name_the_option(field, value, flag):
    with pytest.raises(TransferlabError, match=f"^{field}= ") as info:
        make_config(**{field: value})
    assert info.value.cli_message().startswith(f"{flag} ")


def test_unknown_preset():
    with pytest.raises(TransferlabError, match="preset="):
        make_config("fastest")
