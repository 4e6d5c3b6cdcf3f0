"""Forward-pass throughput of a pretrained body: the plain path against transferlab's inference path.

    python bench/inference.py --model mobilenet_v2 --repeats 5
    python bench/inference.py --photos ../shared/datasets/hotdog-mini

transferlab computes probe features and evaluation logits through a copy of the model
with every BatchNorm folded into its convolution (``models.folded``), channels-last,
under bf16 autocast on CPUs with AMX (``RunConfig.precision="auto"``).
This times the body over the same images at the weights' crop size in batches of each
``--batch-sizes``, in one process, variants alternating, and prints images/s (median
over repeats), the ratios to the plain NCHW fp32 forward at the first batch size, the
largest feature difference, and one JSON line. With ``--photos DIR``
it also predicts every image under DIR with the 1000-class ImageNet head in fp32 and in bf16
(both folded) and reports how many top-1 labels agree and the largest probability change.
"""

from __future__ import annotations

import time

import _harness as harness


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--photos", help="a folder of images: also compare bf16 and fp32 predictions on them")
    args = parser.parse_args()

    import copy

    import torch

    from transferlab.data.transforms import normalize
    from transferlab.inference.forward import cpu_has_amx
    from transferlab.models.model import create_model, folded, load_body
    from transferlab.models.weights import load_state_dict, resolve_weights

    weights = resolve_weights(args.model, "imagenet")
    model = create_model(args.model, 2)
    if weights.path:
        load_body(model, load_state_dict(weights.path))
    plain = model.eval()
    channels_last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    fast = folded(plain)
    pre = weights.preprocessing
    images = torch.randint(0, 256, (args.images, 3, pre.crop_size, pre.crop_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    plain_x = normalize(images, pre, channels_last=False)
    last_x = normalize(images, pre)

    def bf16(fn):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x)
        return run

    paths = {
        "plain NCHW fp32": (plain.features, plain_x),
        "channels-last fp32": (channels_last.features, last_x),
        "folded channels-last fp32": (fast.features, last_x),
        "folded channels-last bf16": (bf16(fast.features), last_x),
    }
    variants = [(name, size) for size in args.batch_sizes for name in paths]

    def run(name: str, size: int) -> torch.Tensor:
        fn, x = paths[name]
        return torch.cat([fn(chunk) for chunk in x.split(size)]).float()

    times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
    outputs = {}
    with torch.inference_mode():
        for v in variants:  # warm-up: oneDNN builds its kernels on the first call
            outputs[v] = run(*v)
        for _ in range(args.repeats):
            for v in variants:
                start = time.perf_counter()
                run(*v)
                times[v].append(time.perf_counter() - start)
    base_key = ("plain NCHW fp32", args.batch_sizes[0])
    base = outputs[base_key]
    plain_rate = args.images / harness.median(times[base_key])
    rows = []
    for v in variants:
        rate = args.images / harness.median(times[v])
        diff = float((outputs[v] - base).abs().max() / base.abs().max())
        rows.append({"variant": v[0], "batch_size": v[1], "images_per_s": round(rate, 1),
                     "ratio": harness.ratio(rate, plain_rate, 2), "max_rel_diff": float(f"{diff:.2g}")})
    columns = [("variant", "variant"), ("batch", "batch_size"), ("images/s", "images_per_s"), ("ratio", "ratio"),
               ("max rel diff", "max_rel_diff")]
    summary = {"model": args.model, "threads": torch.get_num_threads(), "amx": cpu_has_amx(), "rows": rows}
    photos = None
    if args.photos:
        summary["photos"] = compare_on_photos(args.model, args.photos)
        photos = (f"bf16 vs fp32 on {summary['photos']['images']} photos (ImageNet head): "
                  f"top-1 agreement {summary['photos']['top1_agreement']}, "
                  f"largest probability change {summary['photos']['max_prob_change']}")
    harness.report("inference", summary,
                   harness.table(rows, columns, title=f"{args.model} body, {pre.crop_size} px, {args.images} images "
                                 f"per pass, {torch.get_num_threads()} threads, AMX: {cpu_has_amx()}; ratio to "
                                 f"{base_key[0]} at batch {base_key[1]}"),
                   photos)


def compare_on_photos(model_name: str, folder: str) -> dict:
    from pathlib import Path

    import torch

    from transferlab.data.cache import decode
    from transferlab.data.datasets import IMAGE_EXTENSIONS
    from transferlab.inference.forward import eval_batch, predict_logits
    from transferlab.models.model import create_model
    from transferlab.models.weights import load_state_dict, resolve_weights

    weights = resolve_weights(model_name, "imagenet")
    model = create_model(model_name, 1000)
    model.net.load_state_dict(load_state_dict(weights.path))
    pre = weights.preprocessing
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    images = eval_batch(decode(paths, pre, quiet=True).images, pre)
    fp32, bf16 = (predict_logits(model, images, pre, torch.device("cpu"), precision=p).softmax(1)
                  for p in ("fp32", "bf16"))
    return {"images": len(paths), "top1_agreement": round(float((fp32.argmax(1) == bf16.argmax(1)).float().mean()), 3),
            "max_prob_change": round(float((fp32 - bf16).abs().max()), 3)}


if __name__ == "__main__":
    main()
