"""Build a many-class, few-image set from real photos: each class is one photo, its images crops of it.

No public many-class photo set is installable offline here, so this makes one from hotdog-mini:
``--classes`` photos (sorted, from its train/ folder) become classes; each gets ``--train`` + ``--test``
random crops (a small share of the photo, scale 0.05-0.25, so two crops of one photo often share
little) with mild colour and brightness jitter, saved as 160 px JPEGs in an ImageFolder tree with
train/ and test/. The task is instance recognition among many similar food photos.

    python bench/many_classes.py --out runs/many-classes    # 101 classes x (20 train + 5 test)
    python bench/head_fit.py --data runs/many-classes/data --models mobilenet_v2 --seeds 0
"""

from __future__ import annotations

import random
from pathlib import Path

import _harness as harness
from PIL import Image, ImageEnhance

HOTDOG_MINI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hotdog-mini"


def crop(photo: Image.Image, rng: random.Random, size: int, scale: tuple[float, float] = (0.05, 0.25),
         jitter: float = 0.2) -> Image.Image:
    """A random square ``size`` px crop of ``scale`` of the photo's area, colour and brightness x 1 ± ``jitter``."""
    width, height = photo.size
    area = width * height * rng.uniform(*scale)
    ratio = rng.uniform(3 / 4, 4 / 3)
    w = min(width, int(round((area * ratio) ** 0.5)))
    h = min(height, int(round((area / ratio) ** 0.5)))
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    out = photo.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
    out = ImageEnhance.Color(out).enhance(rng.uniform(1 - jitter, 1 + jitter))
    return ImageEnhance.Brightness(out).enhance(rng.uniform(1 - jitter, 1 + jitter))


def build(source: Path, out: Path, classes: int, train: int, test: int, size: int, seed: int) -> Path:
    photos = sorted(p for p in (source / "train").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(photos) < classes:
        raise SystemExit(f"{source}: {len(photos)} photos, fewer than --classes {classes}")
    rng = random.Random(seed)
    for k, path in enumerate(photos[:classes]):
        with Image.open(path) as img:
            photo = img.convert("RGB")
        name = f"c{k:03d}_{path.stem}"
        for split, n in (("train", train), ("test", test)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                crop(photo, rng, size).save(folder / f"{i:02d}.jpg", quality=90)
    return out


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--source", default=str(HOTDOG_MINI))
    parser.add_argument("--out", default="runs/many-classes")
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--test", type=int, default=5)
    parser.add_argument("--size", type=int, default=160)
    harness.add_seed(parser)
    args = parser.parse_args()
    data = build(Path(args.source), Path(args.out) / "data", args.classes, args.train, args.test, args.size,
                 args.seed)
    harness.report("many_classes", {"data": str(data), "source": args.source, "classes": args.classes,
                                    "train": args.train, "test": args.test, "size": args.size, "seed": args.seed},
                   f"{data}: {args.classes} classes x ({args.train} train + {args.test} test) crops of {args.size} px")


if __name__ == "__main__":
    main()
