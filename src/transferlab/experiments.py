"""Experiments built from runs: fine-tune vs. scratch, the offline demo, and studies of many variants."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import rundir
from .config import RunConfig, make_config
from .errors import TransferlabError, opt
from .files import atomic_write_json
from .ranker import Ranking, resolve_auto
from .reports import format_table, summarize_study, write_study_report
from .studies import Study, resolve_freeze
from .train import RunResult, finetune

__all__ = ["DEMO", "choose_model", "compare_scratch", "demo", "comparison_rows", "StudyRun", "plan_study", "run_study"]

log = logging.getLogger(__name__)

# The demo's budget: both arms on 2 CPU cores in under 5 minutes (README, "The demo"):
# 2 epochs per arm on 160 px crops (about 2.5x faster per image than 224 px on 2 cores;
# evaluating at 224 px after training at 160 px measured lower, 0.817 vs 0.824).
DEMO: dict[str, Any] = {"data": "elpv", "model": "mobilenet_v2", "weights": "imagenet", "epochs": 2,
                        "image_size": 160}


def choose_model(config: RunConfig, out: str | Path | None, quiet: bool = False,
                 echo: Callable[[str], None] | None = None) -> tuple[RunConfig, Ranking | None]:
    """With ``model="auto"``: rank once for every run that follows (``out/rank.json`` is reused when there)."""
    saved = Path(out) / rundir.RANKING if out else None
    config, ranking = resolve_auto(config, saved, quiet=quiet)
    if ranking is not None:
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            ranking.write(saved)
        if echo is not None:
            echo(f"{ranking.table()}\npicked {ranking.picked}: {ranking.reason}")
    return config, ranking


def compare_scratch(config: RunConfig, out: str | Path | None, quiet: bool = False,
                    resume: bool = False, ranking: Ranking | None = None) -> dict[str, RunResult]:
    """Train ``config`` from its pretrained weights and the same network from scratch (``model="auto"``: the
    ranking's pick, for both arms; ``ranking``: the one that picked ``config.model``, to record)."""
    if ranking is None:
        config, ranking = choose_model(config, out, quiet)
    arms = {"finetune": config, "scratch": replace(config, weights="none")}
    results = {}
    for name, arm in arms.items():
        arm = replace(arm, out=str(Path(out) / name) if out else None)
        log.info("== %s: %s, weights %s", name, arm.model, arm.weights)
        results[name] = finetune(arm, quiet=quiet, resume=resume, ranking=ranking)
    return results


def comparison_rows(results: dict[str, RunResult]) -> list[dict[str, Any]]:
    """One row per arm: the test split's metrics of the model each arm kept (nothing chosen on test)."""
    rows = []
    for name, r in results.items():
        test = r.metrics.get("test", {})
        rows.append({"run": name, "weights": r.config.weights, "epochs": r.config.epochs,
                     "test_acc": r.metrics["test_acc"], "balanced_acc": test.get("balanced_accuracy"),
                     "macro_f1": test.get("macro_f1"), "roc_auc": test.get("roc_auc"),
                     "wall_s": round(r.metrics["wall_s"], 1), "train_img_per_s": r.metrics.get("train_images_per_s")})
    return rows


def demo(out: str | Path = "runs/demo", quiet: bool = False, **overrides: Any) -> dict[str, RunResult]:
    """Fine-tune MobileNetV2 on ELPV and train it from scratch; print a side-by-side table."""
    config = make_config(**{**DEMO, **overrides})
    config, ranking = choose_model(config, out, quiet, echo=lambda text: print(text, flush=True))
    train_px = config.train_image_size or config.image_size
    size = f"{train_px} px training" if train_px else "the weights' own size for training"
    print(f"transferlab demo: {config.data} with {config.model} ({config.weights} vs. scratch), "
          f"{config.epochs} epochs per arm, {size} crops, batch {config.batch_size}; runs in {out}/", flush=True)
    results = compare_scratch(config, out, quiet=quiet, ranking=ranking)
    print(format_table(comparison_rows(results)))
    return results


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
    from .models import check_freeze

    where = f"study {study.name}, variant {name}"
    try:
        check_freeze(config.model, config.freeze)
    except TransferlabError as exc:
        raise TransferlabError(f"{where}: {exc} (or, in a study, half or all_but_last)") from None
    if config.head_init == "imagenet":
        from .data import resolve_data
        from .heads import resolve_head_map
        from .weights import imagenet_categories

        classes = resolve_data(config.data, config.seed, config.test_fraction).classes
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
    base, ranking = choose_model(base, out, quiet, echo)
    runs = plan_study(study, base, out, seeds)
    for run in runs:
        _check_same_config(run)
    say = echo or (lambda _line: None)
    atomic_write_json(out / "study.json", {"study": study.to_dict(), "base_config": base.to_dict(),
                                            "seeds": list(seeds)})
    start = time.perf_counter()
    todo = sum(not run.finished for run in runs)
    say(f"study {study.name}: {len(study.variants)} variants x {len(seeds)} seeds = {len(runs)} runs "
        f"({len(runs) - todo} already finished) in {out}/")
    for i, run in enumerate(runs, 1):
        label = f"[{i}/{len(runs)}] {run.variant} seed {run.seed}"
        if run.finished:
            log.info("%s: finished earlier, skipped", label)
            continue
        log.info("== %s: %s", label, run.run_dir)
        result = finetune(run.config, quiet=quiet, resume=True,
                          ranking=ranking if ranking and run.config.model == ranking.picked else None)
        m = result.metrics
        say(f"{label}: test_acc {m['test_acc']:.3f} in {m['wall_s']:.0f} s")
        atomic_write_json(out / "summary.json", _summary(study, base, runs, out, None))
    wall_s = time.perf_counter() - start
    if not todo:  # only the report was rewritten: keep the wall time of the invocation that trained
        wall_s = (_read_summary(out / "summary.json") or {}).get("wall_s")
    summary = _summary(study, base, runs, out, wall_s)
    files = write_study_report(out, summary)
    say(f"report: {files['html']} ({files['md'].name}, {files['summary'].name})")
    return summary


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _summary(study: Study, base: RunConfig, runs: list[StudyRun], out: Path,
             wall_s: float | None) -> dict[str, Any]:
    base_dict = base.to_dict()
    resolved = {}
    for run in runs:  # the keys each variant changes, with symbolic values as resolved
        values = run.config.to_dict()
        resolved[run.variant] = {k: v for k, v in values.items() if k not in ("out", "seed") and v != base_dict[k]}
    entries = [{"variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir.relative_to(out))} for r in runs]
    return summarize_study(out, study.to_dict(), base_dict, resolved, entries, wall_s)
