"""Figures of studies, and the two both reports draw: the confusion matrix and the mistakes grid.

Every figure function returns a matplotlib :class:`~matplotlib.figure.Figure` built without
pyplot (nothing is shown by itself, nothing to close; a notebook displays the object), or
None where there is nothing to draw; :func:`png` turns one into PNG bytes. The study report
(:mod:`transferlab.reporting.study`) and the run report (:mod:`transferlab.reporting.run`) draw the same
kind of figure with the same function; the per-run figures are in :mod:`transferlab.reporting.run_figures`.
matplotlib is optional (``pip install 'transferlab[report]'``): :func:`pyplot` says whether it is there.
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TransferlabError
from ..files import readable

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..data.transforms import Preprocessing

__all__ = ["MISTAKES_SHOWN", "FIGURES_HINT", "pm", "pyplot", "new_figure", "png", "plot_accuracy", "plot_curves",
           "plot_group", "honest_scale", "confusion_matrix", "confusion_figure", "mistake_rows", "image_grid",
           "mistakes_figure"]

MISTAKES_SHOWN = 12
FIGURES_HINT = "figures need matplotlib: pip install 'transferlab[report]'"
WRONG = "#9b2c2c"


def pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` as tables and figures show it."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def pyplot() -> Any:
    """matplotlib's pyplot, or None where matplotlib is not installed (reports then hold tables only).

    A process that has not imported pyplot and names no backend (``MPLBACKEND``) gets Agg, so
    no window ever opens; a notebook keeps its inline backend, which displays returned figures.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    if "matplotlib.pyplot" not in sys.modules:
        if not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # load the backend now (no figure is open yet): a notebook's inline backend then displays returned figures
        plt.switch_backend(matplotlib.get_backend())
    import matplotlib.pyplot as plt

    return plt


def new_figure(width: float, height: float) -> Figure:
    """An empty figure outside pyplot's registry (shown once where returned; one-line error without matplotlib)."""
    if pyplot() is None:  # also sets up a notebook's display of figures
        raise TransferlabError(FIGURES_HINT)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def png(fig: Figure, dpi: int = 110) -> bytes:
    """A figure as PNG bytes (zlib level 1: photo grids encode 5x faster, charts grow by a tenth)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


# --------------------------------------------------------------------------- studies


def _colors(summary: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(summary["variant_order"])}


def _chance(summary: dict[str, Any]) -> float | None:
    classes = summary.get("class_names")
    return 1.0 / len(classes) if classes else None


def _curve_label(summary: dict[str, Any]) -> str:
    """What a study's per-epoch curves measure: test accuracy, or validation accuracy where runs held one out."""
    splits = {r.get("curve_split", "test") for v in summary["variants"] for r in v["runs"]}
    return "validation accuracy" if splits == {"val"} else "test accuracy" if splits <= {"test"} \
        else "validation / test accuracy"


def honest_scale(ax: Any, span: float = 0.1) -> None:
    """An accuracy axis at least ``span`` tall (10 points), so a difference of two images is not drawn as a cliff."""
    low, high = ax.get_ylim()
    if high - low < span:
        middle = min(max((high + low) / 2, span / 2), 1 - span / 2)
        ax.set_ylim(middle - span / 2, middle + span / 2)


def plot_accuracy(summary: dict[str, Any]) -> Figure:
    """Final test accuracy per variant: mean bar, ± std, one dot per seed; the best variant dark."""
    done = [v for v in summary["variants"] if v["finished"]][::-1]  # best at the top
    fig = new_figure(8, 0.42 * len(done) + 1.3)
    ax = fig.subplots()
    ys = range(len(done))
    means = [v["test_acc_mean"] for v in done]
    colors = ["#2b6cb0" if v["name"] == summary.get("best_variant") else "#90b4de" for v in done]
    ax.barh(ys, means, xerr=[v["test_acc_std"] or 0.0 for v in done], color=colors, height=0.62,
            error_kw={"ecolor": "#333", "capsize": 3, "lw": 1})
    for y, v in zip(ys, done):
        if v.get("test_acc_interval"):  # the 95 % interval over the variant's test images, under its bar
            ax.plot(v["test_acc_interval"], [y - 0.36] * 2, "-", color="#c05621", lw=2.2, solid_capstyle="butt")
        ax.plot([r["test_acc"] for r in v["runs"]], [y] * len(v["runs"]), "o", ms=3.5, color="#1a202c", alpha=0.7)
        ax.text(1.01, y, pm(v["test_acc_mean"], v["test_acc_std"]), va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
    chance = _chance(summary)
    if chance:
        ax.axvline(chance, color="#999", ls="--", lw=1)
        ax.text(chance, len(done) - 0.35, " chance", color="#777", fontsize=8, va="bottom")
    ax.set_yticks(list(ys), [v["name"] for v in done])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(done) - 0.1)
    ax.set_xlabel("final test accuracy (bar: mean over seeds, black line: ± std, dots: seeds, orange: 95% CI)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title("Accuracy by variant", loc="left", fontsize=11)
    return fig


def plot_curves(summary: dict[str, Any]) -> Figure:
    """Per-epoch accuracy of every variant (mean over seeds, min-max band), from the zero-shot start."""
    colors = _colors(summary)
    fig = new_figure(8, 4.6)
    ax = fig.subplots()
    for v in summary["variants"]:
        curves = [r["curve"] for r in v["runs"] if r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        epochs = list(range(1, n + 1))
        columns = [[c[e] for c in curves] for e in range(n)]
        mean = [sum(col) / len(col) for col in columns]
        zero = v["zero_shot_acc_mean"]
        if zero is not None:
            ax.plot([0, 1], [zero, mean[0]], ls=":", color=colors[v["name"]], lw=1.3)
            ax.plot([0], [zero], "o", mfc="white", color=colors[v["name"]], ms=5)
        ax.plot(epochs, mean, "-o", ms=3, lw=1.8, color=colors[v["name"]],
                label=f"{v['name']} ({mean[-1]:.3f})")
        if len(curves) > 1:
            ax.fill_between(epochs, [min(c) for c in columns], [max(c) for c in columns],
                            color=colors[v["name"]], alpha=0.12, lw=0)
    chance = _chance(summary)
    if chance:
        ax.axhline(chance, color="#999", ls="--", lw=1)
    ax.set_xlabel("epoch (0: zero-shot, before training)" if any(
        v["zero_shot_acc_mean"] is not None for v in summary["variants"]) else "epoch")
    label = _curve_label(summary)
    ax.set_ylabel(label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8.5, frameon=False,
              title="variant (final mean)", title_fontsize=8.5)
    ax.set_title(f"Learning curves: {label} per epoch (line: mean over seeds, band: min-max)",
                 loc="left", fontsize=11)
    return fig


def _group_labels(summary: dict[str, Any], members: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The one config key a group varies, and each member's value of it (else: the variant names)."""
    base = summary["base_config"]
    keys = sorted({k for v in members for k in v["changes"]})
    if len(keys) == 1:
        key = keys[0]
        labels = []
        for v in members:
            value = v["changes"].get(key, base.get(key))
            asked = v["overrides"].get(key, value)
            text = f"{value:g}" if isinstance(value, float) else str(value)
            labels.append(text + (f"\n({asked})" if asked != value else ""))
        return key, labels
    return "variant", [v["name"] for v in members]


def plot_group(summary: dict[str, Any], title: str, names: list[str]) -> Figure | None:
    """One ablation group: test accuracy against the config value its variants change."""
    by_name = {v["name"]: v for v in summary["variants"]}
    members = [by_name[n] for n in names if by_name[n]["finished"]]
    if not members:
        return None
    key, labels = _group_labels(summary, members)
    colors = _colors(summary)
    fig = new_figure(max(3.6, 1.0 * len(members) + 1.4), 3.2)
    ax = fig.subplots()
    xs = list(range(len(members)))
    ax.plot(xs, [v["test_acc_mean"] for v in members], "-", color="#2b6cb0", lw=1.5, zorder=1)
    for x, v in zip(xs, members):
        span = v.get("test_acc_interval")
        if span:  # the 95 % interval over the variant's test images: the scale a difference is read against
            ax.plot([x - 0.16] * 2, span, "-", color="#c05621", lw=2, alpha=0.7, zorder=2,
                    label="95% CI" if x == 0 else None)
        ax.errorbar([x], [v["test_acc_mean"]], yerr=[v["test_acc_std"] or 0.0], fmt="o", ms=6, capsize=4,
                    color=colors[v["name"]], zorder=3)
        ax.plot([x + 0.08] * len(v["runs"]), [r["test_acc"] for r in v["runs"]], ".", color="#1a202c",
                alpha=0.6, ms=4, zorder=2)
        if v["zero_shot_acc_mean"] is not None:
            ax.plot([x - 0.08], [v["zero_shot_acc_mean"]], "o", mfc="white", color=colors[v["name"]], ms=6,
                    label="zero-shot (before training)")
    ax.set_xticks(xs, labels, fontsize=8.5)
    ax.set_xlim(-0.5, len(members) - 0.5)
    honest_scale(ax)
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, loc="left", fontsize=10.5)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7.5, frameon=False, loc="best")
    return fig


# --------------------------------------------------------------------------- shared by both reports


def confusion_matrix(metrics: dict[str, Any]) -> tuple[list[list[int]], list[str]] | None:
    """The test confusion matrix (rows: true class, columns: predicted) and its labels, new or old metrics."""
    block = (metrics.get("test") or {}).get("confusion")
    if isinstance(block, dict) and block.get("matrix"):
        return block["matrix"], [readable(c) for c in block["labels"]]
    if metrics.get("confusion") and metrics.get("class_names"):
        return metrics["confusion"], [readable(c) for c in metrics["class_names"]]
    return None


def confusion_figure(metrics: dict[str, Any], title: str | None = None) -> Figure | None:
    """The test confusion matrix: counts and row percentages (recall), rows true, columns predicted.

    None when ``metrics`` (a run's ``metrics.json``) holds no confusion matrix.
    """
    found = confusion_matrix(metrics)
    if found is None:
        return None
    matrix, classes = found
    n = len(classes)
    total = sum(map(sum, matrix))
    if title is None:
        correct = sum(matrix[i][i] for i in range(n))
        title = f"Test split: {total} images, accuracy {correct / max(total, 1):.3f}"
    size = max(3.6, 0.55 * n + 2.4)
    fig = new_figure(size, size * 0.85)
    ax = fig.subplots()
    ax.imshow([[count / (sum(row) or 1) for count in row] for row in matrix], cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                share = count / (sum(row) or 1)
                ax.text(j, i, f"{count}\n{100 * share:.0f}%", ha="center", va="center", fontsize=9,
                        color="white" if share > 0.5 else "#1a202c")
    tilt = n > 3 or max(map(len, classes)) > 12
    ax.set_xticks(range(n), classes, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title + "\n(cell: count and % of the true class)", loc="left", fontsize=10)
    return fig


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def mistake_rows(rows: Sequence[dict[str, Any]], k: int | None = None) -> list[dict[str, Any]]:
    """The wrong prediction rows, most confident first, as ``{"path", "true", "pred", "confidence"}``.

    ``rows``: ``test_predictions.csv`` rows (``path, label, predicted, correct, prob_<class>...``),
    as strings or numbers; the confidence is the predicted class's probability.
    """
    wrong = []
    for row in rows:
        correct = row.get("correct")
        if correct is not None and str(correct).strip() not in ("", "0", "0.0", "False", "false"):
            continue
        if correct is None and str(row["label"]) == str(row["predicted"]):
            continue
        probs = {key[5:]: _number(v) for key, v in row.items() if key.startswith("prob_")}
        confidence = probs.get(str(row["predicted"]), max(probs.values(), default=float("nan")))
        wrong.append({"path": str(row["path"]), "true": str(row["label"]), "pred": str(row["predicted"]),
                      "confidence": round(confidence, 4)})
    wrong.sort(key=lambda m: -m["confidence"] if m["confidence"] == m["confidence"] else 0.0)
    return wrong[:k] if k is not None else wrong


def image_grid(cells: Sequence[dict[str, Any]], cols: int, title: str, cell_in: float = 2.0,
               color: str = "#1a202c", max_px: int = 256) -> Figure:
    """Images in a grid, each fitted into a square cell under its caption; one axes, so it draws fast.

    Captions name files and classes as people read them (:func:`~transferlab.files.readable`).
    A cell: ``{"image": HWC uint8 array or None, "caption": str, "note": str (shown where the
    image is None), "box": (left, top, width, height) in the image's pixels, outlined dashed}``.
    """
    import numpy as np
    from matplotlib.patches import Rectangle
    from PIL import Image

    side = min(max_px, max([max(c["image"].shape[:2]) for c in cells if c.get("image") is not None] or [64]))
    band_in, gap_in = 0.42, 0.08
    band, gap = round(side * band_in / cell_in), round(side * gap_in / cell_in)
    nrows = math.ceil(len(cells) / cols)
    width, height = cols * (side + gap) - gap, nrows * (side + band + gap) - gap
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    fig = new_figure(cols * (cell_in + gap_in) - gap_in, nrows * (cell_in + band_in + gap_in) - gap_in)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for i, cell in enumerate(cells):
        x0, y0 = (i % cols) * (side + gap), (i // cols) * (side + band + gap) + band
        ax.text(x0 + side / 2, y0 - band * 0.08, readable(cell.get("caption", "")), ha="center", va="bottom",
                fontsize=8, color=color, linespacing=1.25)
        image = cell.get("image")
        if image is None:
            ax.text(x0 + side / 2, y0 + side / 2, readable(cell.get("note", "")), ha="center", va="center", fontsize=8,
                    color="#718096")
            continue
        h, w = image.shape[:2]
        scale = side / max(h, w)
        fitted = np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                          Image.Resampling.BILINEAR))
        top, left = y0 + (side - fitted.shape[0]) // 2, x0 + (side - fitted.shape[1]) // 2
        mosaic[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
        if cell.get("box") is not None:
            bx, by, bw, bh = cell["box"]
            ax.add_patch(Rectangle((left + bx * scale, top + by * scale), bw * scale, bh * scale, fill=False,
                                   ec="#f6e05e", lw=1.5, ls="--"))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_title(title, loc="left", fontsize=10.5)
    return fig


def _eval_crop(path: Path, pre: Preprocessing) -> Any:
    """The image as the model saw it at evaluation: shorter side to resize_size, center crop (HWC uint8)."""
    from ..data.transforms import center_crop, decode_one

    return center_crop(decode_one(path, pre), pre.crop_size).permute(1, 2, 0).numpy()


def _short_name(name: str, width: int = 26) -> str:
    """A file name that fits under an image: its middle elided when longer than ``width``."""
    return name if len(name) <= width else f"{name[:width // 2 - 1]}…{name[-(width // 2 - 1):]}"


def mistakes_figure(rows: Sequence[dict[str, Any]], root: str | Path | None,
                    preprocessing: Preprocessing | dict[str, Any], k: int = MISTAKES_SHOWN) -> Figure | None:
    """The ``k`` most confident mistakes, each the eval crop the model saw, with truth, prediction, confidence.

    ``rows``: prediction rows (see :func:`mistake_rows`), paths relative to ``root`` (or absolute);
    ``preprocessing``: the run's (``metrics["preprocessing"]``). None when nothing was wrong.
    An image that cannot be read any more is drawn as a note in its cell.
    """
    from ..data.transforms import Preprocessing

    pre = preprocessing if isinstance(preprocessing, Preprocessing) else Preprocessing.from_dict(preprocessing)
    shown = mistake_rows(rows, k)
    if not shown:
        return None
    cells = []
    for m in shown:
        path = Path(root) / m["path"] if root is not None else Path(m["path"])
        cell = {"caption": f"{_short_name(path.name)}\ntrue: {m['true']}\npredicted: {m['pred']} "
                           f"({100 * m['confidence']:.0f}%)"}
        try:
            cell["image"] = _eval_crop(path, pre)
        except Exception as exc:  # noqa: BLE001 - one unreadable file leaves a note, not a failed report
            cell["note"] = f"cannot read\n{path.name}\n({type(exc).__name__})"
        cells.append(cell)
    return image_grid(cells, min(4, len(cells)), f"Most confident mistakes ({len(shown)} shown; the eval crop the "
                      f"model saw, {pre.crop_size} px)", cell_in=2.3, color=WRONG)
