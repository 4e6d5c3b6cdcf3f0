"""Linear probes on the frozen features of every stage of a backbone, scored on a validation fifth.

Does a fine-tune miss what the earlier stages see? Each stage's output is pooled over the image
(mean, and max for local marks such as cracks), a logistic regression is fitted on four fifths of
the training split (its L2 strength chosen by 5-fold cross-validation there) and scored on the
other fifth, the same validation split as ``bench/targets.py``. The reference is the probe on the
last stage alone (what ``--freeze body`` fits). Nothing here touches the test split.

    python bench/layer_probe.py --data elpv

Prints a table and one JSON line.
"""

from __future__ import annotations

import time

import _harness as harness
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from targets import VAL_FRACTION  # bench/targets.py: the same validation fifth

from transferlab.data.cache import decode
from transferlab.data.datasets import resolve_data
from transferlab.data.transforms import normalize
from transferlab.inference.forward import eval_batch
from transferlab.models.model import create_model
from transferlab.models.weights import load_state_dict, resolve_weights
from transferlab.train.probes import logistic, probe_cv

GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def stage_features(net: torch.nn.Module, paths: list, pre) -> dict[str, np.ndarray]:
    """Mean- and max-pooled outputs of ``net.blocks[i]`` and of the last conv (``bn2``), per image."""
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output):
            current[name], current[name + "-max"] = output.mean((2, 3)), output.amax((2, 3))
        return record

    handles = [block.register_forward_hook(hook(f"stage{i}")) for i, block in enumerate(net.blocks)]
    handles.append(net.bn2.register_forward_hook(hook("last")))
    images = decode(paths, pre, quiet=True).images
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, len(images), 64):
            net(normalize(eval_batch(images[start:start + 64], pre), pre))
            for name, value in current.items():
                out.setdefault(name, []).append(value)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(values).numpy() for name, values in out.items()}


def score(train: dict, val: dict, y_train: np.ndarray, y_val: np.ndarray, names: list[str]) -> dict:
    """Cross-validated C on train, then validation accuracy and ROC AUC."""
    x_train, x_val = np.concatenate([train[n] for n in names], 1), np.concatenate([val[n] for n in names], 1)
    cv, _, c = probe_cv(x_train, y_train, grid=GRID)
    clf = logistic(c).fit(x_train, y_train)
    return {"cv_acc": round(cv, 4), "c": c, "val_acc": round(float((clf.predict(x_val) == y_val).mean()), 4),
            "val_auc": round(float(roc_auc_score(y_val, clf.predict_proba(x_val)[:, 1])), 4)}


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser, "elpv")
    parser.add_argument("--model", default="tf_efficientnet_lite2", help="a timm EfficientNet(-Lite)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the weights' own")
    args = parser.parse_args()
    resolved = resolve_weights(args.model, "imagenet")
    pre = resolved.preprocessing.with_sizes(args.image_size, None)
    net = create_model(args.model, 2, load_state_dict(resolved.path)).eval().net
    ds = resolve_data(args.data, val_fraction=VAL_FRACTION)  # seed 0, as the validation runs of targets
    if len(ds.classes) != 2:
        raise SystemExit(f"{args.data}: ROC AUC here needs two classes, not {len(ds.classes)}")
    start = time.perf_counter()
    train, val = stage_features(net, list(ds.train.paths), pre), stage_features(net, list(ds.val.paths), pre)
    extract_s = time.perf_counter() - start
    y_train, y_val = np.array(ds.train.labels), np.array(ds.val.labels)
    stages = [n for n in train if n.startswith("stage") and not n.endswith("-max")]
    deep = stages[3:] + ["last"]
    arms = {"last (reference)": ["last"], **{s: [s] for s in stages}, "last-max": ["last-max"],
            "stages 3-last": deep, "stages 3-last, max": [n + "-max" for n in deep],
            "stages 3-last, mean+max": deep + [n + "-max" for n in deep]}
    rows = [{"arm": arm, **score(train, val, y_train, y_val, names)} for arm, names in arms.items()]
    reference = rows[0]["val_acc"]
    best = max(rows, key=lambda r: r["cv_acc"])
    columns = [("features", "arm"), ("cv_acc", "cv_acc", ".4f"), ("val_acc", "val_acc", ".4f"),
               ("val_auc", "val_auc", ".4f"), ("C", "c", "g")]
    harness.report(
        "layer_probe", {"data": args.data, "model": args.model, "crop": pre.crop_size,
                        "extract_s": round(extract_s, 1), "rows": rows, "best": best["arm"]},
        harness.table(rows, columns, title=f"\n{args.data}, {args.model} at {pre.crop_size} px, frozen; "
                      f"{len(y_train)} train / {len(y_val)} validation images; features in {extract_s:.0f} s"),
        f"best on cross-validation: {best['arm']}, val_acc {best['val_acc']:.4f} "
        f"({best['val_acc'] - reference:+.4f} against the last stage)")


if __name__ == "__main__":
    main()
