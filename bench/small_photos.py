"""Build a 2-class set of many small photos from hotdog-mini: the shape of issue 23's 1,400-image, 64 px set.

No such set is installable offline here, so each hotdog-mini photo gives several random crops (a large
share of the photo, scale 0.35-1.0, so each keeps its class's subject) with mild colour and brightness
jitter, saved as ``--size`` px JPEGs: ``--per-photo`` crops of each of the 200 train/ photos for train/,
``--test-per-photo`` of each of the 50 val/ photos for test/. The crops of one photo are correlated, so the
set holds 200 distinct training scenes: it measures the costs of 1,400 images (decoding, features, steps),
not the accuracy 1,400 independent photos would reach.

    python bench/small_photos.py --out runs/small-photos        # 1,400 train + 200 test, 64 px
    TRANSFERLAB_HOME=$(mktemp -d) transferlab rank --data runs/small-photos/data
    transferlab train --data runs/small-photos/data --time-limit 5m
"""

from __future__ import annotations

import random
from pathlib import Path

import _harness as harness
from many_classes import HOTDOG_MINI, crop
from PIL import Image


def build(source: Path, out: Path, per_photo: int, test_per_photo: int, size: int, seed: int) -> dict[str, int]:
    """Write ``out/train/<class>/`` and ``out/test/<class>/``; return the image count of each split."""
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for split, source_split, n in (("train", "train", per_photo), ("test", "val", test_per_photo)):
        for photo_path in sorted(p for p in (source / source_split).rglob("*") if p.suffix.lower() in (".jpg", ".png")):
            with Image.open(photo_path) as img:
                photo = img.convert("RGB")
            folder = out / split / photo_path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = crop(photo, rng, size, scale=(0.35, 1.0), jitter=0.15)
                image.save(folder / f"{photo_path.stem}_{i}.jpg", quality=90)
                counts[split] += 1
    return counts


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--source", default=str(HOTDOG_MINI))
    parser.add_argument("--out", default="runs/small-photos")
    parser.add_argument("--per-photo", type=int, default=7)
    parser.add_argument("--test-per-photo", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    harness.add_seed(parser)
    args = parser.parse_args()
    data = Path(args.out) / "data"
    counts = build(Path(args.source), data, args.per_photo, args.test_per_photo, args.size, args.seed)
    harness.report("small_photos", {"data": str(data), "source": args.source, **counts, "size": args.size,
                                    "seed": args.seed},
                   f"{data}: {counts['train']} train + {counts['test']} test crops of {args.size} px")


if __name__ == "__main__":
    main()
