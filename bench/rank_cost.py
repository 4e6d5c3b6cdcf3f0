"""Where a ranking's seconds go, per offline backbone: its epoch timing and its probes, each against the
way it was done before, in the same run.

- epoch timing: ``rank``'s estimate from steps of ``TIMED_IMAGES`` (8) images (``TIMED_STEPS`` timed) against
  the former one, full batches (32) with three timed steps; their ratio, and the seconds each took to measure;
- probes: ``probe_cv`` + ``knn_cv`` on the backbone's training features with one BLAS thread (as
  ``rank`` runs them now) against BLAS's own thread count, after torch has run (as in a ranking).

    python bench/rank_cost.py --data ../shared/datasets/hotdog-mini
    python bench/rank_cost.py --data elpv
"""

from __future__ import annotations

import time

import _harness as harness
import torch
from threadpoolctl import threadpool_limits

from transferlab.config import make_config
from transferlab.data.cache import decode
from transferlab.data.datasets import dataset_for
from transferlab.data.transforms import center_crop
from transferlab.files import file_digest
from transferlab.models.model import create_model, folded, load_body
from transferlab.models.weights import load_state_dict, resolve_weights
from transferlab.ranking import ranker
from transferlab.train import distributed, probes
from transferlab.train.features import feature_key, run_features


def _epoch_estimate(config, name, weights, images, labels, batch: int, timed: int) -> tuple[float, float]:
    """(estimated seconds per epoch, seconds the estimate took) with ``batch`` images a step."""
    model = create_model(name, int(labels.max()) + 1)
    load_body(model, load_state_dict(weights.path))
    model = model.to(memory_format=torch.channels_last)
    ranker.TIMED_IMAGES, ranker.TIMED_STEPS = batch, timed
    start = time.perf_counter()
    estimate = ranker._epoch_seconds(config, model, images, labels, weights.preprocessing, torch.device("cpu"),
                                     len(images))
    return estimate, time.perf_counter() - start


def _probe_seconds(x, y, seed: int, one_thread: bool) -> tuple[float, float]:
    """(probe_acc, seconds) of the probes, with one BLAS thread or BLAS's own count."""
    fit, knn = probes.probe_cv.__wrapped__, probes.knn_cv.__wrapped__  # without the module's own limit
    start = time.perf_counter()
    if one_thread:
        with threadpool_limits(1, user_api="blas"):
            acc = fit(x, y, seed)[0]
            knn(x, y, seed)
    else:
        acc = fit(x, y, seed)[0]
        knn(x, y, seed)
    return acc, time.perf_counter() - start


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser)
    args = parser.parse_args()
    config = make_config(data=args.data)
    dataset = dataset_for(config)
    saved = (ranker.TIMED_IMAGES, ranker.TIMED_STEPS)
    rows = []
    for name in ranker.offline_models():
        weights = resolve_weights(name, "imagenet")
        pre = weights.preprocessing
        decoded = decode(dataset.train.paths, pre, quiet=True)
        labels = torch.tensor([dataset.train.labels[i] for i in decoded.kept])
        new, new_s = _epoch_estimate(config, name, weights, decoded.images, labels, *saved)
        old, old_s = _epoch_estimate(config, name, weights, decoded.images, labels, 32, 3)
        ranker.TIMED_IMAGES, ranker.TIMED_STEPS = saved
        model = create_model(name, len(dataset.classes))
        load_body(model, load_state_dict(weights.path))
        images, size = decoded.images, pre.crop_size
        x = run_features(folded(model), lambda i, images=images, size=size: center_crop(images[i], size), len(images),
                         pre, torch.device("cpu"), distributed.context(), config.precision, True,
                         feature_key(name, file_digest(weights.path), decoded.key, crop="center")).float().numpy()
        y = labels.numpy()
        acc_many, many_s = _probe_seconds(x, y, config.seed, one_thread=False)
        acc_one, one_s = _probe_seconds(x, y, config.seed, one_thread=True)
        rows.append({"model": name, "epoch_s_8": round(new, 1), "epoch_s_32": round(old, 1),
                     "ratio": harness.ratio(new, old, 2), "timing_s_8": round(new_s, 1), "timing_s_32": round(old_s, 1),
                     "probe_acc": round(acc_one, 4), "same_probe_acc": acc_one == acc_many,
                     "probes_s_one_thread": round(one_s, 1), "probes_s_blas_threads": round(many_s, 1),
                     "probes_speedup": harness.ratio(many_s, one_s, 1)})
        print(f"{name}: done", flush=True)
    columns = [("model", "model"), ("epoch_s (8/step)", "epoch_s_8"), ("epoch_s (32/step)", "epoch_s_32"),
               ("ratio", "ratio"), ("timing s (8)", "timing_s_8"), ("timing s (32)", "timing_s_32"),
               ("probe_acc", "probe_acc"), ("same", "same_probe_acc"), ("probes s (1 thread)", "probes_s_one_thread"),
               ("probes s (BLAS threads)", "probes_s_blas_threads"), ("speedup", "probes_speedup")]
    harness.report("rank_cost", {"data": args.data, "rows": rows},
                   harness.table(rows, columns, f"{args.data}: a ranking's costs, now against before"))


if __name__ == "__main__":
    main()
