"""Which backbone each pick rule takes from the same rankings: "within the noise, the strongest" (today's) against
"within the noise, the fastest" (the rule before it).

For each seed, ``transferlab.rank`` scores the offline backbones on the training split (the run's, its
validation split carved off as ``--model auto`` carves it), then both rules pick from the same candidates,
with no time limit (a limit only removes candidates that do not fit):

- strongest: within one standard error of the best ``probe_acc``, the candidate whose epoch costs most;
- fastest: within one standard error of the best ``probe_acc``, the candidate whose epoch costs least.

Which backbone fine-tunes best comes from ``bench/rank_evidence.py`` (it fine-tunes every candidate and scores
each on test); this bench only ranks, so it never reads a test split.

    python bench/pick_rule.py --data ../shared/datasets/hotdog-mini
    python bench/pick_rule.py --data elpv
"""

from __future__ import annotations

import _harness as harness

from transferlab.ranking.result import Candidate, pick


def fastest_within_noise(candidates: list[Candidate]) -> str:
    """The rule before: within one standard error of the best ``probe_acc``, the fastest epoch."""
    scored = [c for c in candidates if c.scored]
    best = max(scored, key=lambda c: c.probe_acc)
    close = [c for c in scored if c.probe_acc >= best.probe_acc - best.probe_se]
    return min(close, key=lambda c: (c.epoch_s, -c.probe_acc)).model


def main() -> None:
    import transferlab as tl

    parser = harness.parser(__doc__)
    harness.add_data(parser)
    harness.add_seeds(parser)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        ranking = tl.rank(data=args.data, seed=seed, quiet=True)
        scores = {c.model: f"{c.probe_acc:.3f}±{c.probe_se:.3f}" for c in ranking.candidates if c.scored}
        rows.append({"seed": seed, "strongest": pick(ranking.candidates)[0],
                     "fastest": fastest_within_noise(ranking.candidates), "ranked_images": ranking.ranked_images
                     or ranking.train_images, "rank_s": ranking.seconds, **scores})
    columns = [(k, k) for k in rows[0]]
    harness.report("pick_rule", {"data": args.data, "rows": rows}, harness.table(rows, columns))


if __name__ == "__main__":
    main()
