"""Head initialisation from ImageNet rows: mapped rows, means, the unmapped-class rule, zero-shot accuracy."""

import math
from pathlib import Path

import pytest
import torch
from helpers import make_folder
from torchvision.models import MobileNet_V2_Weights

from transferlab.data.cache import decode
from transferlab.data.datasets import Dataset, Split, resolve_data
from transferlab.data.transforms import Preprocessing
from transferlab.errors import TransferlabError
from transferlab.inference.forward import eval_batch, evaluate
from transferlab.models.model import create_model
from transferlab.train.head_init import MEAN, REST, init_head_from_imagenet, resolve_head_map, rest_row

CATEGORIES = tuple(MobileNet_V2_Weights.DEFAULT.meta["categories"])


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"classifier.1.weight": torch.randn(1000, 1280, generator=g),
            "classifier.1.bias": torch.randn(1000, generator=g)}


def no_images(*classes):
    empty = Split((), ())
    return Dataset("fake", Path("."), tuple(classes), empty, empty, "val")


def test_mapped_rows_are_the_pretrained_rows():
    state = fake_state()
    model = create_model("mobilenet_v2", 3, None)
    init_head_from_imagenet(model, state, no_images("dog", "hotdog", "pizza"),
                            {"dog": [207], "pizza": ["pizza"]}, CATEGORIES)
    W, b = state["classifier.1.weight"], state["classifier.1.bias"]
    assert CATEGORIES[963] == "pizza" and CATEGORIES[934] == "hotdog"
    for row, index in enumerate([207, 934, 963]):  # hotdog: built-in
        assert torch.equal(model.head.weight[row], W[index])
        assert torch.equal(model.head.bias[row], b[index])


def test_a_class_mapped_to_several_gets_their_mean():
    state = fake_state(1)
    model = create_model("mobilenet_v2", 2, None)
    init_head_from_imagenet(model, state, no_images("bread", "hotdog"),
                            {"bread": ["French loaf", 931, "pretzel"]}, CATEGORIES)
    W, b = state["classifier.1.weight"], state["classifier.1.bias"]
    idx = [930, 931, 932]
    torch.testing.assert_close(model.head.weight[0], W[idx].mean(0))
    torch.testing.assert_close(model.head.bias[0], b[idx].mean())
    model = create_model("mobilenet_v2", 2, None)
    init_head_from_imagenet(model, state, no_images("hotdog", "other"), {"other": [MEAN]}, CATEGORIES)
    torch.testing.assert_close(model.head.weight[1], W.mean(0))


def test_builtin_mapping_and_plan():
    for classes in (("hotdog", "not_hotdog"), ("hot-dog", "not-hotdog"), ("Hot_Dog", "other")):
        assert resolve_head_map(classes, None, CATEGORIES) == [[934], REST]
    assert resolve_head_map(("hotdog", "not_hotdog"), {"not_hotdog": []}, CATEGORIES) == [[934], REST]
    assert resolve_head_map(("a", "b"), {"a": ["934"], "b": ["mean"]}, None) == [[934], MEAN]


@pytest.mark.parametrize("head_map, classes, needle", [
    (None, ("red", "blue"), "head_map="),
    ({"red": ["hot dog"]}, ("red", "blue"), "'hotdog'"),
    ({"red": [1000]}, ("red", "blue"), "out of range 0-999"),
    ({"red": [-3]}, ("red", "blue"), "out of range"),
    ({"green": [1]}, ("red", "blue"), "'green' not a class of the dataset"),
    ({"red": [1, "rest"]}, ("red", "blue"), "rest stands alone"),
])
def test_mapping_errors_are_clear(head_map, classes, needle):
    with pytest.raises(TransferlabError, match="head_map=") as info:
        resolve_head_map(classes, head_map, CATEGORIES)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_rest_row_is_the_average_tangent_of_log_mean_exp():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(50, 8, generator=g), torch.randn(50, generator=g)
    x = torch.rand(20, 8, generator=g) * 3
    row, bias = rest_row(W, b, x)
    lme = (x @ W.T + b).logsumexp(1) - math.log(50)
    torch.testing.assert_close((x @ row + bias).mean(), lme.mean())  # matches on average
    torch.testing.assert_close(row, (x @ W.T + b).softmax(1).mean(0) @ W)  # mean gradient
    # identical rows: log-mean-exp is exactly that row, and so is the rule
    same_w, same_b = W[:1].repeat(50, 1), b[:1].repeat(50)
    row, bias = rest_row(same_w, same_b, x)
    torch.testing.assert_close(row, W[0])
    torch.testing.assert_close(bias, b[0])
    row, bias = rest_row(W, b, None)  # no images: the tangent at zero features
    torch.testing.assert_close(bias, b.logsumexp(0) - math.log(50))


def test_unmapped_class_uses_unlabeled_training_images(tmp_path):
    root = make_folder(tmp_path / "food", {"train": 3, "val": 1},
                       classes={"hotdog": (200, 120, 60), "not_hotdog": (60, 160, 60)})
    dataset = resolve_data(str(root))
    state = fake_state(2)
    model = create_model("mobilenet_v2", 2, None)
    pre = Preprocessing.from_weights(MobileNet_V2_Weights.DEFAULT).with_sizes(64, None)
    init_head_from_imagenet(model, state, dataset, None, CATEGORIES, pre=pre)
    W, b = state["classifier.1.weight"], state["classifier.1.bias"]
    assert torch.equal(model.head.weight[0], W[934])
    rest = [i for i in range(1000) if i != 934]
    images = eval_batch(decode(dataset.train.paths, pre, quiet=True).images, pre)
    from transferlab.inference.forward import body_features

    row, bias = rest_row(W[rest], b[rest], body_features(model, images, pre, torch.device("cpu")))
    torch.testing.assert_close(model.head.weight[1], row, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.head.bias[1], bias, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # real photos at 224 px
def test_zero_shot_head_recognises_hot_dogs(hotdog_mini):
    from transferlab.models.weights import load_state_dict, resolve_weights

    weights = resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    state = load_state_dict(weights.path)
    dataset = resolve_data(str(hotdog_mini))
    assert dataset.classes == ("hotdog", "not_hotdog") and len(dataset.test) == 50
    model = create_model("mobilenet_v2", 2, state)
    init_head_from_imagenet(model, state, dataset, None, weights.categories)
    pre = weights.preprocessing
    images = eval_batch(decode(dataset.test.paths, pre, quiet=True).images, pre)
    result = evaluate(model, images, torch.tensor(dataset.test.labels), pre, torch.device("cpu"), dataset.classes)
    assert result["accuracy"] >= 0.7, result["accuracy"]  # chance is 0.5; measured 0.74
    assert min(result["per_class"][c]["recall"] for c in dataset.classes) >= 0.5, result["per_class"]
