import torch
from PIL import Image
from torchvision.models import EfficientNet_B0_Weights, MobileNet_V2_Weights

from transferlab.data.datasets import decode_one
from transferlab.data.transforms import (
    Preprocessing,
    apply_crop,
    augment,
    center_crop,
    normalize,
    random_resized_crop_box,
    sample_crop,
)


def test_preprocessing_comes_from_the_weights_metadata():
    v1 = Preprocessing.from_weights(MobileNet_V2_Weights.IMAGENET1K_V1)
    assert (v1.crop_size, v1.resize_size, v1.interpolation) == (224, 256, "bilinear")
    assert v1.mean == (0.485, 0.456, 0.406) and v1.std == (0.229, 0.224, 0.225)
    v2 = Preprocessing.from_weights(MobileNet_V2_Weights.IMAGENET1K_V2)
    assert v2.resize_size == 232
    eff = Preprocessing.from_weights(EfficientNet_B0_Weights.IMAGENET1K_V1)
    assert eff.interpolation == "bicubic"


def test_size_override_keeps_the_resize_ratio():
    pre = Preprocessing.from_weights(MobileNet_V2_Weights.IMAGENET1K_V1).with_sizes(160, None)
    assert (pre.crop_size, pre.resize_size) == (160, 183)


def test_eval_path_matches_torchvision_preset(hotdog_mini):
    weights = MobileNet_V2_Weights.IMAGENET1K_V1
    pre = Preprocessing.from_weights(weights)
    path = next((hotdog_mini / "val" / "hotdog").iterdir())
    expected = weights.transforms()(Image.open(path).convert("RGB"))
    ours = normalize(center_crop(decode_one(path, pre), pre.crop_size)[None], pre, channels_last=False)[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_random_resized_crop_box_is_seeded_and_in_bounds():
    boxes = [random_resized_crop_box(256, 300, (0.25, 1.0), torch.Generator().manual_seed(s)) for s in range(50)]
    again = [random_resized_crop_box(256, 300, (0.25, 1.0), torch.Generator().manual_seed(s)) for s in range(50)]
    assert boxes == again
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 300
        assert 0.25 * 256 * 300 * 0.95 <= h * w <= 256 * 300
    assert len(set(boxes)) > 40


def test_crops_drawn_inside_the_eval_region_never_leave_it():
    image = torch.zeros(3, 256, 300, dtype=torch.uint8)
    top0, left0 = (256 - 224) // 2, round((300 - 224) / 2)  # torchvision's center_crop offsets
    inside = [sample_crop(image, (0.25, 1.0), torch.Generator().manual_seed(s), region=224) for s in range(100)]
    for top, left, h, w, _ in inside:
        assert top0 <= top and top + h <= top0 + 224 and left0 <= left and left + w <= left0 + 224
    anywhere = [sample_crop(image, (0.25, 1.0), torch.Generator().manual_seed(s)) for s in range(100)]
    assert any(top < top0 or left < left0 or top + h > top0 + 224 or left + w > left0 + 224
               for top, left, h, w, _ in anywhere)
    assert {c[4] for c in inside} == {True, False}
    marked = image.clone()
    marked[:, top0:top0 + 224, left0:left0 + 224] = 255  # the eval crop's square is white, the rest black
    pre = Preprocessing(crop_size=64, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3)
    crop = augment(marked, pre, (0.25, 1.0), torch.Generator().manual_seed(0), region=224)
    assert crop.shape == (3, 64, 64) and int(crop.min()) == 255


def test_augment_output_size_and_flip():
    pre = Preprocessing(crop_size=32, resize_size=36, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="nearest")
    ramp = torch.arange(40, dtype=torch.uint8) * 6  # brighter to the right
    image = ramp.expand(3, 36, 40).contiguous()
    flips = []
    for seed in range(12):
        crop = sample_crop(image, (0.5, 1.0), torch.Generator().manual_seed(seed))
        out = augment(image, pre, (0.5, 1.0), torch.Generator().manual_seed(seed))
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        top, left, h, w, flip = crop
        plain = apply_crop(image, (top, left, h, w, False), pre)
        assert torch.equal(out, plain.flip(-1) if flip else plain)
        row = out[0, 0].int()
        assert (row[0] > row[-1]) if flip else (row[0] < row[-1])  # a flipped crop is darker to the right
        flips.append(flip)
    assert 0 < sum(flips) < len(flips)  # both outcomes of the coin occur


def test_flips_draw_their_coins_and_apply_them():
    pre = Preprocessing(crop_size=8, resize_size=8, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="nearest")
    image = (torch.arange(64, dtype=torch.uint8) * 3).view(1, 8, 8).expand(3, 8, 8).contiguous()  # all 64 distinct
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    # "h" draws exactly as before flips existed: box, then one coin (the same stream afterwards)
    g_h, g_old = gen(), gen()
    box = random_resized_crop_box(8, 8, (1.0, 1.0), g_old)
    coin = int(torch.rand(1, generator=g_old).item() < 0.5)
    assert sample_crop(image, (1.0, 1.0), g_h, flips="h") == (*box, coin)
    assert torch.equal(torch.rand(3, generator=g_h), torch.rand(3, generator=g_old))
    codes = {flips: {sample_crop(image, (1.0, 1.0), torch.Generator().manual_seed(s), flips=flips)[4]
                     for s in range(200)} for flips in ("none", "h", "hv", "d4")}
    assert codes == {"none": {0}, "h": {0, 1}, "hv": {0, 1, 2, 3}, "d4": set(range(8))}
    full = (0, 0, 8, 8)
    assert torch.equal(apply_crop(image, (*full, 2), pre), image.flip(-2))
    assert torch.equal(apply_crop(image, (*full, 3), pre), image.flip(-1).flip(-2))  # a half turn
    assert torch.equal(apply_crop(image, (*full, 5), pre), image.rot90(1, (-2, -1)))  # as the report names them
    assert torch.equal(apply_crop(image, (*full, 6), pre), image.rot90(-1, (-2, -1)))
    # the eight codes give the eight distinct symmetries of the square
    assert len({apply_crop(image, (*full, c), pre)[0].flatten().tolist().__repr__() for c in range(8)}) == 8


def test_normalize_is_channels_last_float():
    pre = Preprocessing(crop_size=4, resize_size=4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, pre)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.full((2, 3, 4, 4), 2.0))
