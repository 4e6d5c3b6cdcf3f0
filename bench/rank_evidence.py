"""Does the ranking predict the fine-tune? Rank score of each backbone against its fine-tuned test accuracy.

For each seed: ``rank`` on that seed's training split (timed), then a fine-tune of every candidate
with the same options, scored once on the test split. Prints a table (seed means), Kendall's tau
between each rank score and the test accuracy, what ``--model auto`` picked per seed, and the
ranking's time against one fine-tune of its pick; then one JSON line.

    python bench/rank_evidence.py --data ../shared/datasets/hotdog-mini
    python bench/rank_evidence.py --data elpv --epochs 2 --image-size 160   # the demo's budget

Runs go to ``--out`` (default runs/rank-evidence-<data>) and are reused when finished, so an
interrupted bench continues. Point TRANSFERLAB_HOME at an empty folder for cold caches.
"""

from __future__ import annotations

import statistics
import time

import _harness as harness
from scipy.stats import kendalltau

from transferlab.config import make_config
from transferlab.ranking.ranker import rank
from transferlab.ranking.result import Ranking
from transferlab.rundir import RANKING

SCORES = ("probe_acc", "knn_acc", "logme")


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser)
    harness.add_seeds(parser)
    harness.add_run_options(parser)
    harness.add_out(parser, "rank-evidence")
    args = parser.parse_args()
    options = harness.run_options(args)
    out = harness.out_dir(args)
    per_seed = []
    for seed in args.seeds:
        base = make_config(data=args.data, seed=seed, **options)
        saved = out / f"seed{seed}" / RANKING
        if saved.is_file():
            ranking = Ranking.read(saved)
        else:
            start = time.perf_counter()
            ranking = rank(base, logme_too=True, quiet=True)
            ranking.seconds = round(time.perf_counter() - start, 1)
            saved.parent.mkdir(parents=True, exist_ok=True)
            ranking.write(saved)
        print(f"seed {seed}: ranked in {ranking.seconds:.0f} s, picked {ranking.picked}", flush=True)
        runs = {}
        for cand in ranking.candidates:
            if not cand.scored:
                continue
            metrics = harness.run({"data": args.data, "seed": seed, "model": cand.model, **options},
                                  out / f"seed{seed}" / cand.model)
            run_epoch_s = metrics["train_images"] / metrics["train_images_per_s"]
            runs[cand.model] = {"test_acc": metrics["test_acc"], "wall_s": metrics["wall_s"],
                                "epoch_s": cand.epoch_s, "run_epoch_s": round(run_epoch_s, 1),
                                **{s: getattr(cand, s) for s in SCORES}}
            print(f"  {cand.model}: probe {cand.probe_acc:.3f} knn {cand.knn_acc:.3f} -> test "
                  f"{metrics['test_acc']:.4f} in {metrics['wall_s']:.0f} s", flush=True)
        per_seed.append({"seed": seed, "rank_s": ranking.seconds, "picked": ranking.picked, "runs": runs})

    models = list(per_seed[0]["runs"])
    rows = []
    for m in models:
        test_acc, test_sd = harness.mean_sd([s["runs"][m]["test_acc"] for s in per_seed], 4)
        row = {"model": m, **{k: round(statistics.mean(s["runs"][m][k] for s in per_seed), 4) for k in SCORES},
               "test_acc": test_acc, "test_sd": test_sd,
               "finetune_s": harness.median((s["runs"][m]["wall_s"] for s in per_seed), 1),
               "epoch_s": harness.median((s["runs"][m]["epoch_s"] for s in per_seed), 1),
               "run_epoch_s": harness.median((s["runs"][m]["run_epoch_s"] for s in per_seed), 1)}
        rows.append(row)
    rows.sort(key=lambda r: -r["probe_acc"])
    taus = {}
    for score in SCORES:
        tau_means = kendalltau([r[score] for r in rows], [r["test_acc"] for r in rows]).statistic
        tau_seeds = [kendalltau([s["runs"][m][score] for m in models], [s["runs"][m]["test_acc"] for m in models])
                     .statistic for s in per_seed]
        taus[score] = {"means": round(float(tau_means), 3), "per_seed_mean": round(statistics.mean(tau_seeds), 3)}
    picks = [{"seed": s["seed"], "picked": s["picked"], "test_acc": s["runs"][s["picked"]]["test_acc"],
              "best_test_acc": max(r["test_acc"] for r in s["runs"].values())} for s in per_seed]
    rank_s = harness.median(s["rank_s"] for s in per_seed)
    pick_s = harness.median(s["runs"][s["picked"]]["wall_s"] for s in per_seed)

    columns = [("model", "model"), ("probe_acc", "probe_acc", ".3f"), ("knn_acc", "knn_acc", ".3f"),
               ("logme", "logme", ".3f"), ("test_acc", "test_acc", ".4f"), ("sd", "test_sd", ".3f"),
               ("finetune_s", "finetune_s", ".0f"), ("epoch_s ranked", "epoch_s", ".1f"),
               ("epoch_s run", "run_epoch_s", ".1f")]
    harness.report(
        "rank_evidence", {"data": args.data, "options": options, "rows": rows, "tau": taus, "picks": picks,
                          "rank_s": rank_s, "pick_finetune_s": pick_s},
        harness.table(rows, columns, title=f"\n{args.data}: {len(per_seed)} seeds, options {options or 'defaults'}"),
        *(f"Kendall tau {score} vs test_acc: {t['means']:+.3f} on seed means, {t['per_seed_mean']:+.3f} per seed"
          for score, t in taus.items()),
        *(f"seed {p['seed']}: auto picked {p['picked']} -> {p['test_acc']:.4f} (best of them "
          f"{p['best_test_acc']:.4f})" for p in picks),
        f"ranking {rank_s:.0f} s (median) against {pick_s:.0f} s for one fine-tune of the pick: "
        f"{harness.ratio(rank_s, pick_s):.2f}x")


if __name__ == "__main__":
    main()
