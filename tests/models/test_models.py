import math

import pytest
import torch
from torch import nn

from transferlab.config import make_config
from transferlab.data.transforms import Preprocessing, normalize
from transferlab.errors import TransferlabError
from transferlab.inference import forward as infer
from transferlab.models.model import create_model, folded, list_model_names, load_body, param_groups, stage_names
from transferlab.train.optim import build_optimizer

PRE = Preprocessing(crop_size=48, resize_size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

LISTED = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
          "convnext_tiny"]
GENERIC = ["densenet121", "regnet_y_400mf", "shufflenet_v2_x1_0"]


@pytest.mark.parametrize("name", LISTED + GENERIC)
def test_new_head_is_xavier_and_every_parameter_has_one_owner(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    head = model.head
    assert isinstance(head, nn.Linear) and head.out_features == 5
    bound = math.sqrt(6.0 / (head.in_features + head.out_features))
    assert head.weight.abs().max() <= bound and head.weight.std() > bound / 4
    assert torch.count_nonzero(head.bias) == 0
    owners = {n: model.stage_of(n) for n, _ in model.net.named_parameters()}
    assert "unassigned" not in owners.values()
    assert {n for n, s in owners.items() if s == "head"} == {f"{model.head_name}.weight", f"{model.head_name}.bias"}
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert stage_names(name)[0] == "none" and stage_names(name)[-1] == "body"


def test_listed_models_are_available():
    assert set(LISTED) <= set(list_model_names())
    assert "squeezenet1_0" not in list_model_names()


def test_freeze_up_to_a_stage():
    model = create_model("mobilenet_v2", 2).freeze("stage2")
    frozen = {model.stage_of(n) for n, p in model.net.named_parameters() if not p.requires_grad}
    trainable = {model.stage_of(n) for n, p in model.net.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "stage1", "stage2"}
    assert trainable == {"stage3", "stage4", "stage5", "head"}
    model.freeze("body")
    assert [n for n, p in model.net.named_parameters() if p.requires_grad] == ["classifier.1.weight",
                                                                             "classifier.1.bias"]
    model.unfreeze()
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_stage_lists_the_choices():
    with pytest.raises(TransferlabError, match="freeze='layer9'.*layer4"):
        create_model("resnet18", 2).freeze("layer9")


def test_frozen_batchnorm_statistics_do_not_change():
    torch.manual_seed(0)
    model = create_model("resnet18", 2).freeze("layer2")
    frozen_bn, live_bn = model.net.layer1[0].bn1, model.net.layer3[0].bn1
    before = frozen_bn.running_mean.clone(), frozen_bn.running_var.clone(), live_bn.running_mean.clone()
    model.train()
    assert not frozen_bn.training and live_bn.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64) * 3 + 1), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    opt.step()
    assert torch.equal(frozen_bn.running_mean, before[0]) and torch.equal(frozen_bn.running_var, before[1])
    assert not torch.equal(live_bn.running_mean, before[2])
    assert all(p.grad is None for p in model.net.layer1.parameters())


def test_kept_batchnorm_statistics_do_not_change_while_scale_and_shift_train():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 2)
    model.keep_bn_stats = True
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns]
    model.train()
    assert model.training and model.head.training and not any(m.training for m in bns)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)  # a random body's gradients are tiny; Adam still moves
    nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64) * 3 + 1), torch.tensor([0, 1, 0, 1])).backward()
    opt.step()
    assert all(torch.equal(m.running_mean, mean) for m, (mean, _) in zip(bns, before))
    assert any(not torch.equal(m.weight, weight) for m, (_, weight) in zip(bns, before))
    model.keep_bn_stats = False
    assert all(m.training for m in model.train().modules() if isinstance(m, nn.BatchNorm2d))


def test_a_probe_trains_its_head_at_the_probe_rate_and_a_fine_tune_at_the_body_and_head_rates():
    config = make_config(model="mobilenet_v2", freeze="body")
    probe = build_optimizer(config, create_model("mobilenet_v2", 3).freeze("body"))
    assert {g["lr"] for g in probe.param_groups} == {config.probe_lr}
    config = make_config(model="mobilenet_v2")
    finetune = build_optimizer(config, create_model("mobilenet_v2", 3))
    assert {g["lr"] for g in finetune.param_groups} == {config.lr, config.lr * config.head_lr_mult}


def test_param_groups_lr_ratio_and_frozen_parameters_left_out():
    model = create_model("resnet18", 3).freeze("layer1")
    groups = param_groups(model, lr=1e-3, head_lr_mult=10, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert by_name["body"]["lr"] == 1e-3 and by_name["head"]["lr"] == pytest.approx(1e-2)
    assert by_name["body_no_decay"]["weight_decay"] == 0.0 and by_name["body"]["weight_decay"] == 0.05
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(id(p) not in in_groups for p in model.net.layer1.parameters())
    assert all(id(p) in in_groups for p in model.net.layer2.parameters())


def test_scratch_gives_every_layer_the_head_rate_and_d2l_decays_everything():
    model = create_model("mobilenet_v2", 2)
    groups = param_groups(model, lr=5e-5, head_lr_mult=10, weight_decay=1e-3, decay_1d=True, pretrained=False)
    assert {g["name"] for g in groups} == {"body", "head"}
    assert all(g["lr"] == pytest.approx(5e-4) and g["weight_decay"] == 1e-3 for g in groups)


def test_pretrained_body_is_loaded_and_foreign_weights_refused():
    source = create_model("resnet18", 1000).net.state_dict()
    model = create_model("resnet18", 2, weights=source)
    torch.testing.assert_close(model.net.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])
    assert model.head.out_features == 2
    with pytest.raises(TransferlabError, match="another architecture|do not fit"):
        load_body(create_model("mobilenet_v2", 2), source)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(TransferlabError, match="model='resnet9000': unknown model"):
        create_model("resnet9000", 2)


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_folded_batchnorm_gives_the_same_outputs_and_leaves_the_model_alone(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    for module in model.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
    model.train()
    fast = folded(model)
    assert fast.is_folded and folded(fast) is fast and not fast.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert model.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        expected = model(normalize(images, PRE))
        torch.testing.assert_close(fast.features(normalize(images, PRE)), model.features(normalize(images, PRE)),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(infer.predict_logits(model, images, PRE, torch.device("cpu"), precision="fp32"),
                               expected, atol=1e-4, rtol=1e-4)
