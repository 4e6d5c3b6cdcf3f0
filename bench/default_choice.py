"""The default against the one before it, on the same machine: the evidence behind what ``train --data DIR`` does.

For each set and seed, two cold runs, one after the other (each in its own process, with its own empty
``TRANSFERLAB_HOME``, so nothing is cached):

- ``before``: ``transferlab train --data D --seed S --model mobilenet_v2``, the default before ``auto``
  (MobileNetV2, 3 epochs, no time limit); its wall time is measured around the command;
- ``default``: ``transferlab train --data D --seed S``, today's default (``--model auto``: rank the offline
  backbones, then train the strongest that fits the time a MobileNetV2 run would take, keeping the stage
  best on a validation split carved from train; the test split is scored once, at the end).

``--limit SECONDS`` runs ``--model auto --time-limit`` with that limit instead of the default (``--limit 300``:
5 minutes); ``--limit same`` gives each run the wall time of its ``before`` run. Prints one row per run
(test accuracy, wall time, the model picked, the epochs run) and one JSON line. Runs go to
``runs/default-choice/<set>-<seed>-<arm>``.

    python bench/default_choice.py --data ../shared/datasets/hotdog-mini elpv runs/small-photos/data
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as harness

BEFORE = "mobilenet_v2"


def set_name(data: str) -> str:
    """A set's short name: the folder's, or its parent's for a ``.../NAME/data`` folder as the bench builders write."""
    path = Path(data)
    return path.parent.name if path.name == "data" and path.parent.name else path.name


def _train(data: str, seed: int, out: Path, *options: str) -> dict:
    """One cold ``transferlab train`` in a subprocess: its metrics, with the command's wall time."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TRANSFERLAB_HOME": home}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "transferlab", "train", "--data", data, "--seed", str(seed),
                        "--out", str(out), "--quiet", *options], check=True, env=env)
        wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    plan = metrics.get("time_limit") or {}
    ranking = json.loads((out / "rank.json").read_text()) if (out / "rank.json").is_file() else {}
    return {"test_acc": metrics["test"]["accuracy"], "wall_s": round(wall, 1), "run_s": metrics["wall_s"],
            "model": json.loads((out / "config.json").read_text())["model"], "stage": metrics.get("model_stage"),
            "epochs": plan.get("epochs_run", metrics.get("epochs_trained")), "rank_s": ranking.get("seconds")}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--data", nargs="+", required=True, help="sets: names (elpv) or image folders")
    harness.add_seeds(parser, default=(0,))
    parser.add_argument("--limit", default=None, help="seconds, or same: --model auto --time-limit, not the default")
    parser.add_argument("--out", default="runs/default-choice")
    args = parser.parse_args()
    rows = []
    for data in args.data:
        for seed in args.seeds:
            stem = Path(args.out) / f"{set_name(data)}-{seed}"
            before = _train(data, seed, Path(f"{stem}-before"), "--model", BEFORE)
            limit = None if args.limit is None else before["wall_s"] if args.limit == "same" else float(args.limit)
            options = () if limit is None else ("--model", "auto", "--time-limit", f"{limit:.0f}")
            after = _train(data, seed, Path(f"{stem}-default"), *options)
            for arm, row in (("before", before), ("default", after)):
                rows.append({"set": set_name(data), "seed": seed, "arm": arm,
                             "limit_s": None if arm == "before" or limit is None else round(limit), **row})
            print(json.dumps(rows[-2:]), flush=True)
    wins = {}
    for data in args.data:
        name = set_name(data)
        before = [r["test_acc"] for r in rows if r["set"] == name and r["arm"] == "before"]
        after = [r["test_acc"] for r in rows if r["set"] == name and r["arm"] == "default"]
        wins[name] = round(harness.median(after) - harness.median(before), 4)
    columns = [(c, c, ".4f" if c == "test_acc" else "") for c in
               ("set", "seed", "arm", "limit_s", "test_acc", "wall_s", "rank_s", "model", "stage", "epochs")]
    harness.report("default_choice", {"rows": rows, "default_minus_before": wins},
                   harness.table(rows, columns),
                   harness.pairs({f"default - before, {k} (median test acc)": v for k, v in wins.items()}))


if __name__ == "__main__":
    main()
