"""How the fine-tune's training conditions shift what a probe-fitted head sees.

    python bench/feature_shift.py --data elpv
    python bench/feature_shift.py --data ../shared/datasets/hotdog-mini

Fits the new head on cached eval-crop features (the default head warm-up), then measures
its mean loss and accuracy on the same 320 training images (shuffled, batches of 32) as
the fine-tune would see them: eval center crops; RandomResizedCrop + flip from the whole
image and from inside the eval crop's square (``--crop-region``); the whole image; and
with BatchNorm normalising by batch statistics instead of the pretrained ones
(``--bn-stats update``). A large loss means large first gradients into the body.
Prints a table and one JSON line.
"""

from __future__ import annotations

import _harness as harness
import torch
from torch import nn

from transferlab import make_config
from transferlab.data.batches import train_batches
from transferlab.data.transforms import normalize
from transferlab.inference.forward import eval_batch, use_bf16
from transferlab.train.trainer import Trainer


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser, "elpv")
    harness.add_seed(parser)
    parser.add_argument("--images", type=int, default=320)
    args = parser.parse_args()

    trainer = Trainer(make_config(data=args.data, seed=args.seed), quiet=True)
    model = trainer.prepare()
    trainer.head_warmup(model)
    pre, images, labels = trainer.pre, trainer.data.train_images, trainer.data.train_labels
    bf16 = use_bf16(trainer.device, trainer.config.precision)
    n = min(args.images, len(images))
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[:n]
    picked, picked_labels = [images[i] for i in index], labels[index]

    def augmented(scale: tuple[float, float], region: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x, y) for x, y, _ in train_batches(picked, picked_labels, 32, pre, scale, args.seed, 1,
                                                     prefetch=False, region=region)]

    center = eval_batch(picked, pre)
    conditions = {
        "eval center crop": (False, list(zip(center.split(32), picked_labels.split(32)))),
        "crop (0.6, 1) from the whole image": (False, augmented((0.6, 1.0), None)),
        "crop (0.6, 1) inside the eval square": (False, augmented((0.6, 1.0), pre.crop_size)),
        "whole image (crop scale 1)": (False, augmented((1.0, 1.0), None)),
        "BatchNorm batch statistics, crops inside": (True, augmented((0.6, 1.0), pre.crop_size)),
    }
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    warmup = trainer.warmup["accuracy"]
    results = {"data": args.data, "head_warmup_acc": warmup, "images": n}
    print(f"head warm-up test acc {warmup:.3f}; {n} training images", flush=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, (batch_stats, batches) in conditions.items():
        model.load_state_dict(state)  # batch statistics update the running ones: start from the same model
        model.keep_bn_stats = not batch_stats
        model.train(batch_stats)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.eval()  # only the features move
        loss = correct = 0.0
        with torch.no_grad(), torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=bf16):
            for x, y in batches:
                logits = model(normalize(x, pre, trainer.device)).float().cpu()
                loss += float(loss_fn(logits, y))
                correct += int((logits.argmax(1) == y).sum())
        results[name] = {"loss": round(loss / n, 3), "acc": round(correct / n, 3)}
    rows = [{"condition": name, **results[name]} for name in conditions]
    harness.report("feature_shift", results,
                   harness.table(rows, [("condition", "condition"), ("loss", "loss", ".3f"), ("acc", "acc", ".3f")],
                                 title=""))


if __name__ == "__main__":
    main()
