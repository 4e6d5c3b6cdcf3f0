"""The fast inference paths must compute what the plain paths compute (body features, channels-last, bf16)."""

import pytest
import torch
from PIL import Image
from torchvision.models import MobileNet_V2_Weights

from transferlab.data import cache
from transferlab.data.transforms import Preprocessing, normalize
from transferlab.inference import forward as infer
from transferlab.models.model import create_model
from transferlab.models.weights import load_state_dict, resolve_weights

PRE = Preprocessing(crop_size=48, resize_size=56, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_probe_features_give_the_full_models_logits():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 3).freeze("body").eval()
    images = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    features = infer.body_features(model, images, PRE, torch.device("cpu"))
    with torch.no_grad():
        full = model(normalize(images, PRE))
        torch.testing.assert_close(model.head(features), full, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # real photos at 224 px
def test_fast_eval_path_predicts_like_the_plain_torchvision_path(hotdog_mini):
    weights = resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    model = create_model("mobilenet_v2", 1000, load_state_dict(weights.path))
    model.net.load_state_dict(load_state_dict(weights.path))
    model.eval()
    pre = weights.preprocessing
    paths = sorted((hotdog_mini / "val" / "hotdog").iterdir())[:8]
    plain = torch.stack([MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(Image.open(p).convert("RGB"))
                         for p in paths])
    fast = infer.eval_batch(cache.decode(paths, pre, quiet=True, disk=False).images, pre)
    with torch.no_grad():
        expected = model(plain)
    got = infer.predict_logits(model, fast, pre, torch.device("cpu"), precision="fp32")
    assert torch.equal(expected.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=1e-2)  # channels-last kernels sum in another order


@pytest.mark.slow  # real photos at 224 px
def test_bf16_prediction_agrees_with_fp32_on_real_photos(hotdog_mini):
    weights = resolve_weights("mobilenet_v2", "imagenet", allow_download=False)
    model = create_model("mobilenet_v2", 1000)
    model.net.load_state_dict(load_state_dict(weights.path))
    pre = weights.preprocessing
    paths = sorted((hotdog_mini / "val").rglob("*.jpg"))
    images = infer.eval_batch(cache.decode(paths, pre, quiet=True, disk=False).images, pre)
    fp32 = infer.predict_logits(model, images, pre, torch.device("cpu"), precision="fp32")
    bf16 = infer.predict_logits(model, images, pre, torch.device("cpu"), precision="bf16")
    # 1000 ImageNet classes, many of them close: a few of the 50 top-1 labels may swap
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() >= 0.9
    assert (fp32.softmax(1) - bf16.softmax(1)).abs().max() < 0.25
