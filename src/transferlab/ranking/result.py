"""The outcome of ranking backbones (:mod:`transferlab.ranking.ranker`): the candidates, the rule that picks, the table.

Plain data, no torch: run reports and notebooks read ``rank.json`` through it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import FOLDS
from ..errors import TransferlabError

__all__ = ["SCORE", "FOLDS", "MIN_EPOCHS", "REFERENCE", "Candidate", "Ranking", "pick", "reference_limit"]

SCORE = "probe_acc"  # what the pick maximises


@dataclass
class Candidate:
    """One backbone's line of the ranking."""

    model: str
    weights: str = ""  # where the weights came from
    crop: int | None = None
    dim: int | None = None  # feature width
    probe_acc: float | None = None
    probe_se: float | None = None  # standard error of probe_acc over the folds
    probe_c: float | None = None  # the inverse L2 strength that scored best
    knn_acc: float | None = None
    logme: float | None = None
    feature_s: float | None = None  # seconds to get the features (a cache hit costs reading them)
    cached: bool = False  # the features were on disk already
    epoch_s: float | None = None  # seconds per training epoch of all training images, measured
    finetune_s: float | None = None  # epoch_s x epochs
    image_s: float | None = None  # seconds per image to decode it and run the body once (the run's first model)
    note: str = ""  # why it was not scored, or not eligible

    @property
    def scored(self) -> bool:
        return self.probe_acc is not None


@dataclass
class Ranking:
    """The candidates, best first, and the one picked."""

    data: str
    train_images: int
    classes: int
    epochs: int
    budget: float | None
    candidates: list[Candidate] = field(default_factory=list)
    picked: str | None = None
    reason: str = ""
    seconds: float = 0.0
    score: str = SCORE
    folds: int = FOLDS
    ranked_images: int | None = None  # the stratified sample scored (None: every training image)
    time_left: float | None = None  # seconds a time-limited run had left when it picked
    limit_s: float | None = None  # the run's time limit: --time-limit, or what the reference's run would take
    limit_why: str = ""  # where limit_s comes from, when not from --time-limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Ranking:
        values = dict(values)
        values["candidates"] = [Candidate(**c) for c in values.get("candidates", [])]
        return cls(**values)

    def write(self, path: str | Path) -> Path:
        from ..files import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Ranking:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise TransferlabError(f"{path}: not a readable ranking ({type(exc).__name__}); delete it to rank "
                                   "again") from None

    def rows(self) -> list[dict[str, Any]]:
        """The table, one dict per candidate, as the CLI prints it."""
        def num(value: float | None, digits: int = 3) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        out = []
        for c in self.candidates:
            out.append({"model": c.model, "crop": c.crop or "-",
                        "probe_acc": "-" if c.probe_acc is None else f"{c.probe_acc:.3f}±{c.probe_se:.3f}",
                        "knn_acc": num(c.knn_acc), **({"logme": num(c.logme)} if self.has_logme else {}),
                        "epoch_s": num(c.epoch_s, 1), "features_s": num(c.feature_s, 1) + (" (cached)"
                                                                                           if c.cached else ""),
                        "note": "; ".join(filter(None, ["picked" if c.model == self.picked else "", c.note]))})
        return out

    @property
    def has_logme(self) -> bool:
        return any(c.logme is not None for c in self.candidates)

    def table(self) -> str:
        rows = self.rows()
        if not rows:
            return "(no candidates)"
        keys = list(rows[0])
        widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
        lines = ["  ".join(k.upper().ljust(widths[k]) for k in keys).rstrip()]
        lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip() for r in rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        rows = self.rows()
        head = "".join(f"<th>{escape(k)}</th>" for k in rows[0]) if rows else ""
        body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
        return (f"<p>ranking on {escape(self.data)}: {self.train_images} training images, {self.classes} classes, "
                f"{self.seconds:.0f} s; picked <b>{escape(str(self.picked))}</b> ({escape(self.reason)})</p>"
                f"<table><tr>{head}</tr>{body}</table>")


def pick(candidates: Sequence[Candidate], budget: float | None = None, time_left: float | None = None,
         run_images: int = 0, epochs: int = 1, hard: bool = True) -> tuple[str | None, str]:
    """The strongest backbone among those within one standard error of the best ``probe_acc``.

    Within the fold-to-fold noise the probe cannot tell the backbones apart, and the one whose epoch costs
    most (the most compute per image) fine-tunes best (docs/results/ranking.md); outside it, the score wins.
    ``budget``: seconds the fine-tune (``epochs`` x ``epoch_s``) may take. ``time_left``: seconds a time-limited
    run has left for ``run_images`` images; a candidate is eligible when its first model (decoding and one body
    pass per image, ``image_s``) and :data:`MIN_EPOCHS` epoch fit, else the first model alone. Where none fits,
    the cheapest overruns a ``hard`` limit (``--time-limit``) least; a limit that is only the reference's time
    is already spent, and the score decides.
    """
    scored = [c for c in candidates if c.scored]
    if time_left is not None:
        for n in (min(epochs, MIN_EPOCHS), 0):
            fits = [c for c in scored if _run_s(c, run_images, n) <= time_left]
            if fits:
                what = f"its first model and {n} epoch{'s' if n != 1 else ''}" if n else "its first model alone"
                return _within_noise(fits, f"{what} fit the {time_left:.0f} s left")
        if scored and hard:  # over the limit whatever is picked: the cheapest first model overruns it least
            cheapest = min(scored, key=lambda c: _run_s(c, run_images, 0))
            return cheapest.model, f"no candidate's first model fits the {time_left:.0f} s left; the cheapest"
        if scored:  # the ranking took the reference's time (a small set): the score decides
            return _within_noise(scored, "the ranking took the time a reference run would take, so the score decides")
    eligible = [c for c in scored if budget is None or c.finetune_s is None or c.finetune_s <= budget]
    if not eligible:
        return None, "no candidate was scored within the budget"
    return _within_noise(eligible, f"fine-tune within {budget:.0f} s" if budget is not None else "")


MIN_EPOCHS = 1  # a time-limited run picks the strongest backbone that fits this many epochs where one does
REFERENCE = "mobilenet_v2"  # without --time-limit, auto's run gets the time this backbone's run would take


def reference_limit(candidates: Sequence[Candidate], run_images: int, epochs: int) -> tuple[float, str] | None:
    """Seconds a run of :data:`REFERENCE` (else of the cheapest candidate) would take on this machine: its first
    model and ``epochs`` epochs, as measured; and the words for it. None where nothing was measured."""
    timed = [c for c in candidates if c.scored and c.image_s is not None and c.epoch_s is not None]
    if not timed:
        return None
    ref = next((c for c in timed if c.model == REFERENCE), None) or min(timed, key=lambda c: _run_s(c, run_images,
                                                                                                epochs))
    seconds = max(1.0, _run_s(ref, run_images, epochs))  # a time limit is at least a second
    return seconds, f"what {ref.model}'s {epochs} epoch{'s' if epochs != 1 else ''} would take here"


def _run_s(c: Candidate, images: int, epochs: int) -> float:
    """Seconds a run on ``c`` takes to its first model and ``epochs`` epochs (inf where not measured)."""
    if c.image_s is None or (epochs and c.epoch_s is None):
        return math.inf
    return c.image_s * images + epochs * (c.epoch_s or 0.0)


def _within_noise(eligible: Sequence[Candidate], why: str) -> tuple[str, str]:
    best = max(eligible, key=lambda c: c.probe_acc)
    close = [c for c in eligible if c.probe_acc >= best.probe_acc - best.probe_se]
    chosen = max(close, key=lambda c: (c.epoch_s if c.epoch_s is not None else -math.inf, c.probe_acc))
    tail = f"; {why}" if why else ""
    if chosen is best:
        return best.model, f"best {SCORE} {best.probe_acc:.3f}{tail}"
    return chosen.model, (f"{SCORE} {chosen.probe_acc:.3f}, within one standard error ({best.probe_se:.3f}) of "
                          f"{best.model}'s {best.probe_acc:.3f}, and the larger backbone ({chosen.epoch_s:.1f} s "
                          f"against {best.epoch_s:.1f} s an epoch){tail}")
