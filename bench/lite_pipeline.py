"""ImageNet predictions of the offline EfficientNet-Lite weights through transferlab's own pipeline.

    python bench/lite_pipeline.py                       # all 250 photos of hotdog-mini
    python bench/lite_pipeline.py --models tf_efficientnet_lite0 --threads 1

Each model goes the way ``transferlab train --model NAME`` takes it: ``resolve_weights`` (the
installed package, sha256 checked), ``load_state_dict`` (keys renamed to timm's),
``create_model(NAME, 1000, weights=...)`` (the 1000-way head loads as it is), the preprocessing the
weights resolved to (decode, shorter side to resize_size, center crop, normalise), and the
BatchNorm-folded copy that predicts. Per model: the share of hot-dog photos with ImageNet class 934
in the top-5 / at top-1, top-1 agreement with MobileNetV2 (the same pipeline) on all photos, mean
max-softmax, the largest logit difference folded vs. unfolded, and images/s. Prints a table and a
JSON line. ``bench/verify_efficientnet_lite.py`` is the independent check this one repeats.
"""

from __future__ import annotations

import time
from pathlib import Path

import _harness as harness
import torch

from transferlab.data.transforms import decode_one, normalize
from transferlab.inference.forward import eval_batch, predict_logits
from transferlab.models.model import create_model
from transferlab.models.weights import load_state_dict, resolve_weights

HOTDOG = 934
REPO = Path(__file__).resolve().parents[1]
MODELS = ["mobilenet_v2", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


def run(name: str, paths: list[Path], device: torch.device) -> dict[str, object]:
    weights = resolve_weights(name, "imagenet", allow_download=False)
    model = create_model(name, 1000, weights=load_state_dict(weights.path)).eval()
    pre = weights.preprocessing
    images = eval_batch([decode_one(p, pre) for p in paths], pre)
    start = time.perf_counter()
    logits = predict_logits(model, images, pre, device, precision="fp32")
    seconds = time.perf_counter() - start
    with torch.inference_mode():  # predict_logits ran a folded copy; the model itself is the reference
        plain = model(normalize(images[:16], pre))
    return {"model": name, "weights": weights.name, "source": weights.source, "crop": pre.crop_size,
            "resize": pre.resize_size, "interpolation": pre.interpolation, "mean": round(pre.mean[0], 4),
            "std": round(pre.std[0], 4), "logits": logits, "fold_max_diff": float((logits[:16] - plain).abs().max()),
            "images_per_s": round(len(paths) / seconds, 1)}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--photos", default=str(REPO.parent / "shared" / "datasets" / "hotdog-mini"))
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(p for p in Path(args.photos).rglob("*.jpg"))
    is_hotdog = torch.tensor([p.parent.name == "hotdog" for p in paths])
    rows = [run(name, paths, torch.device("cpu")) for name in ["mobilenet_v2", *[m for m in args.models
                                                                                 if m != "mobilenet_v2"]]]
    reference = rows[0]["logits"].argmax(1)
    for row in rows:
        probs = row.pop("logits").softmax(1)
        top5 = probs.topk(5, 1).indices
        row.update(hotdog_top5=round(float((top5[is_hotdog] == HOTDOG).any(1).float().mean()), 3),
                   hotdog_top1=round(float((top5[is_hotdog, 0] == HOTDOG).float().mean()), 3),
                   agree_mnv2=round(float((top5[:, 0] == reference).float().mean()), 3),
                   mean_conf=round(float(probs.max(1).values.mean()), 3))
    columns = [("model", "model"), ("weights", "source"), ("crop/resize", lambda r: f"{r['crop']}/{r['resize']}"),
               ("interp", "interpolation"), ("mean/std", lambda r: f"{r['mean']}/{r['std']}"),
               ("hot-dog top-5", "hotdog_top5"), ("hot-dog top-1", "hotdog_top1"), ("agree MNv2", "agree_mnv2"),
               ("conf", "mean_conf"), ("fold max diff", "fold_max_diff", ".1e"), ("img/s", "images_per_s")]
    harness.report("lite_pipeline", {"torch": torch.__version__, "threads": args.threads, "photos": len(paths),
                                     "hotdog_photos": int(is_hotdog.sum()), "rows": rows},
                   harness.table(rows, columns))


if __name__ == "__main__":
    main()
