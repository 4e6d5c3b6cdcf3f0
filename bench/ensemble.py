"""Would averaging two backbones pay? Test accuracy of the mean probabilities of two fine-tuned runs.

Reads what ``bench/rank_evidence.py`` left (``rank.json`` and every candidate's
``test_predictions.csv`` per seed) and compares, per seed: the ranking's pick, the top-2 ranked
backbones averaged, the best single backbone (known only afterwards, from the test split) and
the best pair. Nothing is trained; one table and one JSON line.

    python bench/ensemble.py runs/rank-evidence-hotdog-mini runs/rank-evidence-elpv
"""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from pathlib import Path

import _harness as harness

from transferlab.rundir import PREDICTIONS, RANKING


def _probabilities(path: Path) -> tuple[list[str], list[str], list[list[float]]]:
    """(files, labels, probability rows) of a run's test_predictions.csv, classes in column order."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [k for k in rows[0] if k.startswith("prob_")]
    classes = [c.removeprefix("prob_") for c in columns]
    return ([r["path"] for r in rows], [classes.index(r["label"]) for r in rows],
            [[float(r[c]) for c in columns] for r in rows])


def _accuracy(runs: dict[str, list[list[float]]], labels: list[int], members: tuple[str, ...]) -> float:
    right = 0
    for i, label in enumerate(labels):
        mean = [sum(runs[m][i][k] for m in members) for k in range(len(runs[members[0]][i]))]
        right += mean.index(max(mean)) == label
    return right / len(labels)


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("evidence", nargs="+", help="folders written by bench/rank_evidence.py")
    args = parser.parse_args()
    results = []
    for folder in map(Path, args.evidence):
        per_seed = []
        for seed_dir in sorted(folder.glob("seed*")):
            ranking = json.loads((seed_dir / RANKING).read_text())
            names = [c["model"] for c in ranking["candidates"] if c["probe_acc"] is not None]
            runs, labels, files = {}, None, None
            for name in names:
                these, labels, runs[name] = _probabilities(seed_dir / name / PREDICTIONS)
                if files is not None and these != files:
                    raise SystemExit(f"{seed_dir}: the runs were tested on different files")
                files = these
            pairs = {p: _accuracy(runs, labels, p) for p in itertools.combinations(names, 2)}
            scores = {"pick": _accuracy(runs, labels, (ranking["picked"],)),
                      "top2": _accuracy(runs, labels, tuple(names[:2])),
                      "best_single": max(_accuracy(runs, labels, (n,)) for n in names),
                      "best_pair": max(pairs.values())}
            per_seed.append({"seed": seed_dir.name, **{k: round(v, 4) for k, v in scores.items()},
                             "top2_models": names[:2]})
        means = {k: round(statistics.mean(s[k] for s in per_seed), 4)
                 for k in ("pick", "top2", "best_single", "best_pair")}
        results.append({"evidence": str(folder), "means": means, "seeds": per_seed})
    columns = [("evidence", lambda r: Path(r["evidence"]).name), ("auto pick", lambda r: r["means"]["pick"], ".4f"),
               ("top-2 mean", lambda r: r["means"]["top2"], ".4f"),
               ("best single", lambda r: r["means"]["best_single"], ".4f"),
               ("best pair", lambda r: r["means"]["best_pair"], ".4f")]
    harness.report("ensemble", {"results": results}, harness.table(results, columns))


if __name__ == "__main__":
    main()
