"""Experiments built from runs: fine-tune vs. scratch, the offline demo, and studies of many variants."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import RunConfig
from ..console import count, score_text
from ..errors import TransferlabError, opt
from ..files import atomic_write_json
from ..reporting.study import summarize_study, verdict, write_study_report
from .finetuning import choose_model, finetune
from .study_spec import Study, resolve_freeze

__all__ = ["StudyRun", "plan_study", "run_study", "check_study_dir", "STUDY_FILE"]

log = logging.getLogger(__name__)
STUDY_FILE = "study.json"  # what makes a folder a study's: the study, its base config and seeds


# --------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class StudyRun:
    """One variant x seed of a study: an ordinary run directory ``out/<variant>/seed<k>``."""

    variant: str
    seed: int
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)

    @property
    def finished(self) -> bool:
        return rundir.is_finished(self.run_dir)


def plan_study(study: Study, base: RunConfig, out: str | Path, seeds: Sequence[int]) -> list[StudyRun]:
    """Every run of the study, seed by seed (so an interrupted study has all variants of the first seeds).

    Symbolic freeze values are resolved for each variant's model and every config is
    validated before anything trains.
    """
    if not seeds:
        raise TransferlabError(f"{opt('seeds')} must be at least 1")
    out = Path(out)
    configs: dict[str, RunConfig] = {}
    for name, overrides in study.variants.items():
        values = {**base.to_dict(), **overrides, "out": None}
        try:
            config = RunConfig.from_dict(values, source=f"{study.source}: variant {name!r}")
            config = replace(config, freeze=resolve_freeze(config.freeze, config.model)).validate()
            config = _same_head_training(config, overrides)
        except TransferlabError as exc:
            raise TransferlabError(f"study {study.name}, variant {name}: {exc}") from None
        _preflight(study, name, config)
        configs[name] = config
    return [StudyRun(name, seed, replace(config, seed=seed, out=str(out / name / f"seed{seed}")))
            for seed in seeds for name, config in configs.items()]


def _same_head_training(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A probe variant trains its head as long as a fine-tune does: the warm-up's epochs plus ``epochs``.

    A pretrained fine-tune fits its head alone for ``head_warmup_epochs`` on cached features, then
    ``epochs`` more with the body; a probe that got ``epochs`` alone would be compared on less head
    training. A variant that names its own ``epochs`` keeps them.
    """
    if config.freeze != "body" or "epochs" in overrides or not config.pretrained:
        return config
    return replace(config, epochs=config.epochs + config.head_warmup_epochs)


def _preflight(study: Study, name: str, config: RunConfig) -> None:
    """Catch what would stop a variant mid-study (bad stage name, no head mapping) before any training."""
    from ..models.model import check_freeze

    where = f"study {study.name}, variant {name}"
    try:
        check_freeze(config.model, config.freeze)
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc} (or, in a study, half or all_but_last)") from None
    if config.head_init == "imagenet":
        from ..data.datasets import dataset_for
        from ..models.weights import imagenet_categories
        from ..train.head_init import resolve_head_map

        classes = dataset_for(config, validation=False).classes
        categories = imagenet_categories(config.model)
        try:
            resolve_head_map(classes, config.head_map, categories)
        except TransferlabError as exc:
            raise TransferlabError(f"{where}: {exc}") from None


def _check_same_config(run: StudyRun) -> None:
    """A run directory left by another configuration is an error, not something to mix in."""
    diff = rundir.saved_differences(run.run_dir, run.config)
    if diff:
        raise TransferlabError(f"{run.run_dir}: run with other options ({'; '.join(diff[:4])}); "
                               f"use another {opt('out')} or delete that folder")


def run_study(study: Study, base: RunConfig, out: str | Path, seeds: Sequence[int], quiet: bool = False,
              echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every variant x seed not finished yet, then write summary.json, report.md and report.html.

    Finished runs (``metrics.json`` present) are skipped; half-done ones resume from
    their checkpoint. Returns the summary.
    """
    out = Path(out)
    check_study_dir(out)
    base, ranking = choose_model(base, out, quiet, echo)
    runs = plan_study(study, base, out, seeds)
    for run in runs:
        _check_same_config(run)
    say = echo or (lambda _line: None)
    atomic_write_json(out / STUDY_FILE, {"study": study.to_dict(), "base_config": base.to_dict(),
                                            "seeds": list(seeds)})
    start = time.perf_counter()
    todo = sum(not run.finished for run in runs)
    say(f"study {study.name}: {count(len(study.variants), 'variant')} x {count(len(seeds), 'seed')} = "
        f"{count(len(runs), 'run')} "
        f"({len(runs) - todo} already finished) in {out}/")
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {run.variant} seed {run.seed}"
        if run.finished:
            log.info("%s: finished earlier, skipped", label)
            continue
        log.info("== %s: %s", label, run.run_dir)
        started = (Path(run.run_dir) / rundir.CONFIG).is_file()  # a fresh run starts; a half-done one resumes
        result = finetune(run.config, quiet=quiet, resume=started,
                          ranking=ranking if ranking and run.config.model == ranking.picked else None)
        m = result.metrics
        say(f"{label}: test accuracy {score_text(m.get('test') or {'accuracy': m['test_acc']}, digits=3)} in "
            f"{m['wall_s']:.0f} s")
        atomic_write_json(out / "summary.json", _summary(study, base, runs, out, None))
    wall_s = time.perf_counter() - start
    if not todo:  # only the report was rewritten: keep the wall time of the invocation that trained
        wall_s = (rundir.read_json(out / "summary.json") or {}).get("wall_s")
    summary = _summary(study, base, runs, out, wall_s)
    files = write_study_report(out, summary)
    say(verdict(summary))
    say(f"report: {files['html']} ({files['md'].name}, {files['summary'].name})")
    return summary


def check_study_dir(out: Path) -> None:
    """Refuse, with one line, a study folder that is not new, empty or a study's own (its ``study.json``).

    A study writes ``summary.json``, ``report.md``, ``report.html`` and ``figures/`` at its top: never over a
    run, and never over a folder of the user's own files.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise TransferlabError(f"{opt('out', out)}: is a file; choose a folder for the study")
    if rundir.RunDir(out).holds_run():
        raise TransferlabError(f"{opt('out', out)}: holds a run, not a study; choose a new or empty folder")
    entries = sorted(name for name in os.listdir(out) if not name.startswith("."))
    study = rundir.read_json(out / STUDY_FILE)
    if entries and entries != [rundir.RANKING] and not (isinstance(study, dict) and "study" in study):
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise TransferlabError(f"{opt('out', out)}: not empty and not a study ({shown}); choose a new or empty "
                               "folder")


def _summary(study: Study, base: RunConfig, runs: list[StudyRun], out: Path,
             wall_s: float | None) -> dict[str, Any]:
    base_dict = base.to_dict()
    resolved = {}
    for run in runs:  # the keys each variant changes, with symbolic values as resolved
        values = run.config.to_dict()
        resolved[run.variant] = {k: v for k, v in values.items() if k not in ("out", "seed") and v != base_dict[k]}
    entries = [{"variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir.relative_to(out))} for r in runs]
    return summarize_study(out, study.to_dict(), base_dict, resolved, entries, wall_s)
