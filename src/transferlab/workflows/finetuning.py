"""One fine-tune from a config, and the one home of ``--model auto``: rank the offline backbones, keep the pick."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import AUTO, RunConfig, make_config
from ..data.datasets import Dataset, dataset_for
from ..ranking import ranker
from ..ranking.result import REFERENCE, Ranking
from ..train import distributed
from ..train.result import RunResult
from ..train.trainer import Trainer

__all__ = ["finetune", "resolve_model", "choose_model", "write_report"]

log = logging.getLogger(__name__)


def finetune(config: RunConfig | None = None, quiet: bool = False, resume: bool = False, force: bool = False,
             overwrite: bool = False, ranking: Ranking | None = None, **overrides: Any) -> RunResult:
    """Fine-tune (or train from scratch with ``weights="none"``) and return the result.

    With ``out``, the run directory's rules apply (:func:`~transferlab.rundir.check_run_dir`):
    ``resume`` continues an interrupted run with the options it was started with (``force``
    accepts others), and a finished run is trained again only with ``overwrite``. ``model="auto"``
    ranks the offline backbones on the training split first (:func:`~transferlab.ranking.ranker.rank`);
    ``ranking`` passes one made before (its pick must be ``config.model``), to be recorded.

    >>> result = finetune(data="hotdog", model="resnet18", epochs=3, out="runs/r18")  # doctest: +SKIP
    """
    if config is None:
        config = make_config(**overrides)
    elif overrides:
        config = replace(config, **overrides)
    config = _rankable(config)
    dataset = None
    if config.model == AUTO:  # the ranking scores the run's own training split (its validation carved off)
        config.validate(force=force)
        if config.out and not resume:  # a folder that would be refused is refused before the ranking, not after
            rundir.check_run_dir(config.out, config, force=force, overwrite=overwrite)
        dataset = dataset_for(config)
    saved = Path(config.out) / rundir.RANKING if config.out and resume else None
    ranked_now = config.model == AUTO and not (saved is not None and saved.is_file())
    config, ranking = resolve_model(config, saved, dataset, quiet, ranking)
    trainer = Trainer(config, quiet=quiet, resume=resume, force=force, overwrite=overwrite, dataset=dataset,
                      ranking=ranking)
    if ranked_now and ranking is not None and config.time_limit:  # the ranking spent the run's own time
        trainer.state.elapsed_before = ranking.seconds
    result = trainer.fit()
    if result.run_dir is not None and trainer.dist.is_main:
        write_report(result.run_dir, trainer.dataset)
    return result


def write_report(run_dir: Path, dataset: Dataset | None = None) -> None:
    """``report.html`` of a finished run; a failure there is a warning, never the loss of the run."""
    try:
        from ..reporting.run import write_run_report

        write_run_report(run_dir, dataset)
    except Exception as exc:  # noqa: BLE001
        log.warning("report: could not write %s (%s); `transferlab report %s` tries again",
                    run_dir / rundir.REPORT, exc, run_dir)


def _rankable(config: RunConfig) -> RunConfig:
    """``model="auto"`` ranks ImageNet-pretrained bodies in one process; with other ``weights`` (scratch, a file)
    or under torchrun the run is the reference backbone's, as before auto was the default (``transferlab rank``
    before torchrun, and ``--model PICK``, rank for several processes)."""
    if config.model == AUTO and (config.weights != "imagenet" or distributed.context().enabled):
        return replace(config, model=REFERENCE)
    return config


def resolve_model(config: RunConfig, saved: str | Path | None = None, dataset: Dataset | None = None,
                  quiet: bool = False, ranking: Ranking | None = None,
                  clock: bool = True) -> tuple[RunConfig, Ranking | None]:
    """``config`` with ``model="auto"`` replaced by the ranking's pick, and the ranking behind its model.

    Without a ``time_limit`` (and with ``clock``), the run gets the one the ranking measured: the time
    the reference backbone's run would take (:func:`~transferlab.ranking.result.reference_limit`);
    several runs of one ranking (a study, the demo) train the pick as configured (``clock=False``).
    ``saved``: a ranking file to reuse when it exists (a resumed run keeps its pick); ``ranking``: one
    made before. A ranking that did not pick ``config.model`` is not the model's, and is dropped.
    """
    config = _rankable(config)
    if config.model == AUTO:
        ranking = Ranking.read(saved) if saved is not None and Path(saved).is_file() else \
            ranker.rank(config, dataset=dataset, quiet=quiet)
        config = replace(config, model=ranking.picked,
                         time_limit=config.time_limit or (ranking.limit_s if clock else None))
    elif ranking is None and saved is not None and Path(saved).is_file():
        ranking = Ranking.read(saved)
    return config, ranking if ranking is not None and ranking.picked == config.model else None


def choose_model(config: RunConfig, out: str | Path | None, quiet: bool = False,
                 echo: Callable[[str], None] | None = None) -> tuple[RunConfig, Ranking | None]:
    """With ``model="auto"``: rank once for every run that follows (``out/rank.json`` is reused when there)."""
    if config.model != AUTO:
        return config, None
    saved = Path(out) / rundir.RANKING if out else None
    config, ranking = resolve_model(config, saved, quiet=quiet, clock=False)
    if ranking is not None:
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            ranking.write(saved)
        if echo is not None:
            echo(f"{ranking.table()}\npicked {ranking.picked}: {ranking.reason}")
    return config, ranking
