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

import statistics

import _harness as harness

from transferlab.config import make_config

ARMS = {
    "finetune": {},
    "finetune_logreg": {"head_fit": "logreg"},
    "probe": {"freeze": "body", "probe_long": True},
    "probe_logreg": {"freeze": "body", "head_fit": "logreg"},
}


def _options(options: dict) -> dict:
    """An arm's options as ``make_config`` takes them (``probe_long`` resolved to its epochs)."""
    options = dict(options)
    if options.pop("probe_long", False):  # as long as a fine-tune's head: warm-up + epochs
        base = make_config(**options)
        options["epochs"] = base.epochs + base.head_warmup_epochs
    return options


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser)
    parser.add_argument("--models", default="mobilenet_v2")
    harness.add_seeds(parser)
    parser.add_argument("--arms", default=",".join(ARMS))
    harness.add_run_options(parser)
    harness.add_out(parser, "head-fit")
    args = parser.parse_args()
    common = harness.run_options(args)
    out = harness.out_dir(args)
    rows = []
    for model in args.models.split(","):
        for arm in args.arms.split(","):
            accs, bal, walls = [], [], []
            for seed in args.seeds:
                m = harness.run(_options({"data": args.data, "model": model, "seed": seed, **common, **ARMS[arm]}),
                                out / model / arm / f"seed{seed}")
                accs.append(m["test_acc"])
                bal.append(m["test"]["balanced_accuracy"])
                walls.append(m["wall_s"])
                print(f"{model} {arm} seed {seed}: test_acc {m['test_acc']:.4f} in {m['wall_s']:.0f} s", flush=True)
            test_acc, sd = harness.mean_sd(accs, 4)
            rows.append({"model": model, "arm": arm, "test_acc": test_acc, "sd": sd,
                         "balanced_acc": round(statistics.mean(bal), 4), "accs": accs,
                         "wall_s": harness.median(walls, 1)})
    columns = [("model", "model"), ("arm", "arm"), ("test_acc", "test_acc", ".4f"), ("sd", "sd", ".3f"),
               ("bal_acc", "balanced_acc", ".4f"), ("wall_s", "wall_s", ".0f"),
               ("per seed", lambda r: " ".join(f"{a:.3f}" for a in r["accs"]))]
    title = f"\n{args.data}, seeds {args.seeds}, options {common or 'defaults'}"
    harness.report("head_fit", {"data": args.data, "options": common, "rows": rows},
                   harness.table(rows, columns, title=title))


if __name__ == "__main__":
    main()
