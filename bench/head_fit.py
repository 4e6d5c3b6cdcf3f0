"""How the head learns on cached features: AdamW epochs (the default) against a logistic regression
whose L2 strength is chosen by cross-validation on the training split (``--head-fit logreg``).

Four arms per backbone and seed, every one scored once on the test split:

- ``finetune``: the defaults (head warm-up of 10 AdamW epochs, then the fine-tune);
- ``finetune_logreg``: the same, the warm-up head fitted as a logistic regression;
- ``probe``: ``--freeze body`` trained as long as a fine-tune's head (warm-up + epochs of AdamW);
- ``probe_logreg``: ``--freeze body --head-fit logreg``.

    python bench/head_fit.py --data ../shared/datasets/hotdog-mini --models tf_efficientnet_lite2,mobilenet_v2
    python bench/head_fit.py --data elpv --models mobilenet_v2 --epochs 2 --image-size 160

Prints a table (mean ± sd over seeds, and the wall time) and one JSON line. Runs go to ``--out``
and are reused when finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from transferlab.config import make_config
from transferlab.rundir import METRICS, is_finished
from transferlab.workflows.finetuning import finetune

ARMS = {
    "finetune": {},
    "finetune_logreg": {"head_fit": "logreg"},
    "probe": {"freeze": "body", "probe_long": True},
    "probe_logreg": {"freeze": "body", "head_fit": "logreg"},
}


def _metrics(options: dict, out: Path) -> dict:
    if is_finished(out):
        return json.loads((out / METRICS).read_text())
    options = dict(options)
    if options.pop("probe_long", False):  # as long as a fine-tune's head: warm-up + epochs
        base = make_config(**options)
        options["epochs"] = base.epochs + base.head_warmup_epochs
    return finetune(make_config(**options, out=str(out)), quiet=True, resume=(out / "checkpoint.pt").exists()).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", default="mobilenet_v2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    common = {k: v for k, v in {"epochs": args.epochs, "image_size": args.image_size}.items() if v is not None}
    out = Path(args.out or f"runs/head-fit-{Path(args.data).name}")
    rows = []
    for model in args.models.split(","):
        for arm in args.arms.split(","):
            accs, bal, walls = [], [], []
            for seed in args.seeds:
                m = _metrics({"data": args.data, "model": model, "seed": seed, **common, **ARMS[arm]},
                             out / model / arm / f"seed{seed}")
                accs.append(m["test_acc"])
                bal.append(m["test"]["balanced_accuracy"])
                walls.append(m["wall_s"])
                print(f"{model} {arm} seed {seed}: test_acc {m['test_acc']:.4f} in {m['wall_s']:.0f} s", flush=True)
            rows.append({"model": model, "arm": arm, "test_acc": round(statistics.mean(accs), 4),
                         "sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                         "balanced_acc": round(statistics.mean(bal), 4), "accs": accs,
                         "wall_s": round(statistics.median(walls), 1)})
    print(f"\n{args.data}, seeds {args.seeds}, options {common or 'defaults'}")
    print(f"{'model':<24}{'arm':<17}{'test_acc':>9}{'sd':>7}{'bal_acc':>9}{'wall_s':>8}  per seed")
    for r in rows:
        print(f"{r['model']:<24}{r['arm']:<17}{r['test_acc']:>9.4f}{r['sd']:>7.3f}{r['balanced_acc']:>9.4f}"
              f"{r['wall_s']:>8.0f}  {' '.join(f'{a:.3f}' for a in r['accs'])}")
    print(json.dumps({"bench": "head_fit", "data": args.data, "options": common, "rows": rows}))


if __name__ == "__main__":
    main()
