"""Class weighting and validation-based selection on an imbalanced set, against the defaults, same machine.

    python bench/imbalance.py --data elpv --seeds 0 1 2
    python bench/imbalance.py --data elpv --budget demo   # the demo's budget: 2 epochs at 160 px

Arms (each one ``tl.finetune(tl.make_config(data=..., seed=..., **options), quiet=True)``):

- defaults: no class weights, last epoch kept, no validation split;
- balanced: ``class_weights="balanced"`` (inverse-frequency loss weights);
- select_loss: the defaults with 15 % of train carved off as validation and the epoch with
  the lowest validation loss kept (``select_metric="loss"``);
- balanced_select: both.

Every arm is scored on the same test split (it does not depend on the validation carve).
Prints a table (per seed, then mean over seeds) and one JSON line. The minority class is the
one with the fewest training images (ELPV: defective).
"""

from __future__ import annotations

import statistics
import time

import _harness as harness

ARMS = {
    "defaults": {},
    "balanced": {"class_weights": "balanced"},
    "select_loss": {"select_metric": "loss"},
    "balanced_select": {"class_weights": "balanced", "select_metric": "loss"},
}
COLUMNS = ("accuracy", "balanced_accuracy", "minority_recall", "macro_f1", "ece")


def run_arm(data: str, seed: int, options: dict, budget: str) -> dict:
    import transferlab as tl
    from transferlab.workflows.compare import DEMO

    extra = {k: v for k, v in DEMO.items() if k in ("epochs", "image_size")} if budget == "demo" else {}
    start = time.perf_counter()
    result = tl.finetune(tl.make_config(data=data, seed=seed, **options, **extra), quiet=True)
    test = result.metrics["test"]
    support = {c: v["support"] for c, v in test["per_class"].items()}
    minority = min(support, key=support.get)
    return {"accuracy": test["accuracy"], "balanced_accuracy": test["balanced_accuracy"],
            "minority_recall": test["per_class"][minority]["recall"], "minority": minority,
            "macro_f1": test["macro_f1"], "ece": test["ece"], "best_epoch": result.metrics["selection"]["best_epoch"],
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser, "elpv")
    harness.add_seeds(parser)
    parser.add_argument("--arms", nargs="+", default=["defaults", "balanced", "select_loss"], choices=list(ARMS),
                        help="(default: defaults balanced select_loss)")
    parser.add_argument("--budget", choices=["defaults", "demo"], default="defaults",
                        help="defaults: 3 epochs at 224 px; demo: `transferlab demo`'s 2 epochs at 160 px")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:  # seeds outermost, so an interrupted run still compares every arm
        for arm in args.arms:
            row = run_arm(args.data, seed, ARMS[arm], args.budget)
            results[arm].append(row)
            print(f"{arm:16s} seed {seed}: " + "  ".join(f"{k} {row[k]:.4f}" for k in COLUMNS)
                  + f"  best_epoch {row['best_epoch']}  {row['wall_s']:.0f} s", flush=True)
    summary = {}
    for arm, rows in results.items():
        means = {k: round(statistics.mean(r[k] for r in rows), 4) for k in COLUMNS}
        per_seed = {k: [r[k] for r in rows] for k in COLUMNS}
        summary[arm] = {"mean": means, "per_seed": per_seed, "best_epoch": [r["best_epoch"] for r in rows]}
    columns = [("arm", "arm"), *((k, k, ".3f") for k in COLUMNS)]
    harness.report("imbalance", {"data": args.data, "budget": args.budget, "seeds": args.seeds, "arms": summary},
                   harness.table([{"arm": arm, **s["mean"]} for arm, s in summary.items()], columns,
                                 title=f"\nmean over seeds {', '.join(map(str, args.seeds))}:"))


if __name__ == "__main__":
    main()
