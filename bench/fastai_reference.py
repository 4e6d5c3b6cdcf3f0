"""Time for transferlab to reach the test accuracy of fastai's ``vision_learner(...).fine_tune(3)``, same weights.

    python bench/fastai_reference.py --data ../shared/datasets/hotdog-mini
    python bench/fastai_reference.py --data elpv --seeds 0 1 2

fastai lives in a virtual environment of its own (``--python``), which sees this project's torch,
torchvision and transferlab through a ``.pth`` file, so both arms run the very same torch:

    python3 -m venv /tmp/fa-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/fa-venv/lib/python3.11/site-packages/_transferlab_venv.pth
    /tmp/fa-venv/bin/pip install --no-deps fastai fastcore fasttransform "fastprogress<1.1" fastdownload \\
        "plum-dispatch<2.10" beartype rich markdown-it-py mdurl requests charset-normalizer

(``--no-deps``: fastai's own requirements add spacy, needed for text only, and fastprogress 1.1
python-fasthtml; the rest of them, pandas, scipy, scikit-learn, matplotlib, come from the project's venv.)

Each seed runs two arms, one subprocess each, fastai first; both train on the same training split
and are scored on the same test split, the ones a transferlab run of ``--data`` uses (for a tree of
train/ and val/, val/):

- fastai, as its documentation teaches it, with its defaults: a ``DataBlock`` over those files
  (``item_tfms=Resize(256)``, fastai's presizing with ``batch_tfms=aug_transforms(size=224,
  min_scale=0.75)``: the test split is scored at 224 on a centre crop), batch 64 (``--bs``),
  its default workers (one per CPU); ``vision_learner(dls, mobilenet_v2, metrics=accuracy)``, the
  arch registered in ``model_meta`` as fastai registers its own (cut before the classifier, body/head
  split, ImageNet statistics) and loading, ``weights_only=True``, the file transferlab resolves for
  ``mobilenet_v2`` (fastai's own head: concat pooling, 512 units, BatchNorm, dropout); then
  ``learn.fine_tune(3)``: one frozen epoch and three unfrozen, at fine_tune's default lr (no
  ``lr_find``). fastai scores its validation set, here the test split, after every epoch;
- transferlab: ``finetune`` with the default preset and ``model="mobilenet_v2"`` into a temporary
  run directory (model files written as in any run); ``--extra`` overrides its config.

Both clocks start after importing torch and torchvision; each library's own import is inside its
clock. fastai's final accuracy is its test accuracy after its last epoch; transferlab's time to it
counts every model transferlab has saved: the head warm-up's, each epoch's and the final one. fastai's
time is given both without its per-epoch scoring passes (``fastai_s``, the ratio's numerator;
transferlab's clock keeps its own scoring) and as a user waits for it (``fastai_wall_s``). The
issue's target: a ratio of at least 10. Prints a table per seed, the medians, the curves and one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _harness as harness
import time_to_accuracy as tta

MODEL = "mobilenet_v2"
FASTAI_EPOCHS = 3  # fine_tune(3): one frozen epoch first, then these
FASTAI_PYTHON = "/tmp/fa-venv/bin/python"
TARGET_RATIO = 10.0


# --------------------------------------------------------------------------- arms (run in subprocesses)


def arm_fastai(spec: dict, seed: int, bs: int) -> dict:
    """fastai's ``fine_tune(FASTAI_EPOCHS)`` on ``spec``'s files and weights; a row per epoch, scored on the
    test split. An ``error`` instead where fastai cannot be imported."""
    start, import_s = tta._start_clock()
    import torch
    import torchvision

    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # fastai's import
    try:
        import fastai
        import fastai.vision.all as fv
        from fastai.vision.learner import default_split, imagenet_stats, model_meta
    except Exception as exc:  # any failure to import is reported as one line
        return {"error": f"{type(exc).__name__}: {exc}"}
    fastai_import_s = time.perf_counter() - start

    def mobilenet_v2(pretrained: bool = True) -> torch.nn.Module:
        net = torchvision.models.mobilenet_v2()
        if pretrained:
            net.load_state_dict(torch.load(spec["weights"], weights_only=True))
        return net

    # as fastai's model_meta has its own archs: the body is every child but the classifier
    model_meta[mobilenet_v2] = {"cut": -1, "split": default_split, "stats": imagenet_stats}

    class EpochClock(fv.Callback):
        """A row per epoch: the clock, the seconds spent scoring so far, and the test accuracy."""

        order = fv.Recorder.order + 1  # after the Recorder has stored the epoch's metrics

        def __init__(self) -> None:
            self.rows, self.scoring_s, self.scoring_from = [], 0.0, 0.0

        def before_validate(self) -> None:
            self.scoring_from = time.perf_counter()

        def after_validate(self) -> None:
            self.scoring_s += time.perf_counter() - self.scoring_from

        def after_epoch(self) -> None:
            wall_s = time.perf_counter() - start
            names = list(self.recorder.metric_names[1:])  # final_record: the epoch's values without "epoch"
            acc = float(self.learn.final_record[names.index("accuracy")])
            stage = "frozen" if not self.rows else f"epoch {len(self.rows)}"
            self.rows.append({"stage": stage, "test_acc": acc, "wall_s": wall_s,
                              "train_s": wall_s - self.scoring_s, "scoring_s": self.scoring_s})

    fv.set_seed(seed)
    items = spec["train"] + spec["test"]  # [path, class name] pairs
    block = fv.DataBlock(blocks=(fv.ImageBlock, fv.CategoryBlock(vocab=spec["classes"])), get_x=fv.ItemGetter(0),
                         get_y=fv.ItemGetter(1), splitter=fv.IndexSplitter(range(len(spec["train"]), len(items))),
                         item_tfms=fv.Resize(256), batch_tfms=fv.aug_transforms(size=224, min_scale=0.75))
    dls = block.dataloaders(items, bs=bs)
    clock = EpochClock()
    learn = fv.vision_learner(dls, mobilenet_v2, metrics=fv.accuracy, cbs=[clock])
    setup_s = time.perf_counter() - start
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(FASTAI_EPOCHS)
    wall_s = time.perf_counter() - start
    history = clock.rows
    return {"history": history, "wall_s": wall_s, "train_s": history[-1]["train_s"],
            "scoring_s": history[-1]["scoring_s"], "final_acc": history[-1]["test_acc"], "import_s": import_s,
            "fastai_import_s": fastai_import_s, "setup_s": setup_s, "fastai_version": fastai.__version__,
            "device": str(dls.device), "bs": bs, "num_workers": dls.train.fake_l.num_workers,
            "train_batches": len(dls.train)}


def arm_transferlab(data: str, seed: int, extra: dict, run_dir: str) -> dict:
    """transferlab's run (``time_to_accuracy``'s arm) into ``run_dir``, its curve on the test split: the head
    warm-up's model, each epoch's (where epochs are scored on test) and the final model."""
    result = tta.arm_transferlab(data, False, seed, {**extra, "model": MODEL, "out": run_dir})
    epochs = [{**h, "stage": f"epoch {h['epoch']}"} for h in result["history"] if "test_acc" in h]
    final = {"stage": "final", "test_acc": result["final_acc"], "wall_s": result["wall_s"]}
    return {**result, "curve": result["first_model"] + epochs + [final]}


# --------------------------------------------------------------------------- driver


def data_spec(data: str, seed: int, extra: dict) -> dict:
    """The files of the run's training and test splits, its classes, and the weight file of ``MODEL``: what
    the fastai arm trains on, read the one way a transferlab run reads them."""
    from transferlab import make_config
    from transferlab.data.datasets import dataset_for
    from transferlab.models.weights import resolve_weights

    dataset = dataset_for(make_config(data=data, seed=seed, **{**extra, "model": MODEL}))

    def pairs(split) -> list[list[str]]:
        return [[str(path), dataset.classes[label]] for path, label in zip(split.paths, split.labels)]

    return {"classes": list(dataset.classes), "train": pairs(dataset.train), "test": pairs(dataset.test),
            "test_source": dataset.test_source, "weights": str(resolve_weights(MODEL, "imagenet").path)}


def run_arm(name: str, args: argparse.Namespace, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastai-reference-") as tmp:
        out = Path(tmp) / "arm.json"
        python = args.python if name == "fastai" else sys.executable
        cmd = [python, __file__, "--arm", name, "--data", args.data, "--seed", str(seed), "--arm-out", str(out),
               "--extra", json.dumps(args.extra), "--bs", str(args.bs), "--run-dir", str(Path(tmp) / "run")]
        env = dict(os.environ)
        if name == "fastai":
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps(data_spec(args.data, seed, args.extra)))
            cmd += ["--spec", str(spec)]
            env.pop("THP_MEM_ALLOC_ENABLE", None)  # fastai runs as users run it
        subprocess.run(cmd, check=True, env=env)
        result = json.loads(out.read_text())
    if "error" in result:
        sys.exit(f"fastai_reference: {args.python} cannot import fastai ({result['error']}); install it as "
                 "bench/fastai_reference.py's docstring says, or pass --python")
    return result


def seed_row(seed: int, fa: dict, tl: dict) -> dict:
    target = fa["final_acc"]
    reached = next((r for r in tl["curve"] if r["test_acc"] >= target - 1e-9), None)
    tl_s = tta.time_to(tl["curve"], target)
    return {"seed": seed, "fastai_acc": round(target, 4), "fastai_s": round(fa["train_s"], 1),
            "fastai_wall_s": round(fa["wall_s"], 1), "transferlab_s_to_fastai_acc": round(tl_s, 1) if tl_s else None,
            "reached_at": reached["stage"] if reached else None, "ratio": harness.ratio(fa["train_s"], tl_s, 2),
            "ratio_wall": harness.ratio(fa["wall_s"], tl_s, 2), "transferlab_acc": round(tl["final_acc"], 4),
            "transferlab_wall_s": round(tl["wall_s"], 1)}


def curve(label: str, rows: list[dict]) -> str:
    return f"{label:<20} " + " ".join(f"{r['test_acc']:.3f}@{r['wall_s']:.0f}s" for r in rows)


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser)
    harness.add_seeds(parser, (0,))
    parser.add_argument("--python", default=FASTAI_PYTHON,
                        help=f"the interpreter of fastai's venv (default {FASTAI_PYTHON})")
    parser.add_argument("--bs", type=int, default=64, help="fastai's batch size (default 64, fastai's own)")
    parser.add_argument("--extra", type=json.loads, default={},
                        help="JSON overrides of transferlab's config (the model stays mobilenet_v2)")
    for hidden in ("--arm", "--arm-out", "--spec", "--run-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm == "fastai":
        result = arm_fastai(json.loads(Path(args.spec).read_text()), args.seed, args.bs)
        Path(args.arm_out).write_text(json.dumps(result))
        return
    if args.arm == "transferlab":
        Path(args.arm_out).write_text(json.dumps(arm_transferlab(args.data, args.seed, args.extra, args.run_dir)))
        return

    if not Path(args.python).is_file():
        sys.exit(f"fastai_reference: no interpreter at {args.python}; create fastai's venv as "
                 "bench/fastai_reference.py's docstring says, or pass --python")
    rows, curves, fastai_runs = [], [], []
    for seed in args.seeds:
        fa = run_arm("fastai", args, seed)
        tl = run_arm("transferlab", args, seed)
        fastai_runs.append(fa)
        rows.append(seed_row(seed, fa, tl))
        curves += [curve(f"seed {seed} fastai", fa["history"]), curve(f"seed {seed} transferlab", tl["curve"])]

    def median(key: str, digits: int) -> float | None:
        values = [r[key] for r in rows]
        return harness.median(values, digits) if None not in values else None

    first = fastai_runs[0]
    ratio = median("ratio", 2)
    summary = {
        "data": args.data, "seeds": args.seeds, "cpu_threads": os.cpu_count(), "model": MODEL,
        "fastai_version": first["fastai_version"], "fastai_device": first["device"], "fastai_bs": args.bs,
        "fastai_num_workers": first["num_workers"], "fastai_epochs": f"1 frozen + {FASTAI_EPOCHS}",
        "fastai_final_acc": median("fastai_acc", 4), "fastai_s": median("fastai_s", 1),
        "fastai_wall_s": median("fastai_wall_s", 1),
        "transferlab_s_to_fastai_acc": median("transferlab_s_to_fastai_acc", 1),
        "time_to_accuracy_ratio": ratio, "time_to_accuracy_ratio_wall": median("ratio_wall", 2),
        "transferlab_final_acc": median("transferlab_acc", 4), "transferlab_wall_s": median("transferlab_wall_s", 1),
        "target_ratio": TARGET_RATIO, "meets_target": ratio is not None and ratio >= TARGET_RATIO,
    }
    columns = [("seed", "seed"), ("fastai acc", "fastai_acc", ".4f"), ("fastai s", "fastai_s", ".1f"),
               ("fastai wall s", "fastai_wall_s", ".1f"), ("tl s to fastai acc", "transferlab_s_to_fastai_acc", ".1f"),
               ("reached at", "reached_at"), ("ratio", "ratio", ".2f"), ("ratio wall", "ratio_wall", ".2f"),
               ("tl acc", "transferlab_acc", ".4f"), ("tl wall s", "transferlab_wall_s", ".1f")]
    harness.report("fastai_reference", {**summary, "per_seed": rows},
                   harness.table(rows, columns, "per seed (tl: transferlab; ratio: fastai s / tl s to fastai acc)"),
                   harness.pairs(summary, "medians over seeds"), "\n".join(curves))


if __name__ == "__main__":
    main()
