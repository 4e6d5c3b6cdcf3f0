"""Figures of runs and studies, one function per figure (matplotlib, drawn to PNG bytes).

The study report and the run report draw the same figure with the same function.
"""

from __future__ import annotations

import io
import math
from typing import Any

__all__ = ["MISTAKES_SHOWN", "pm", "pyplot", "plot_accuracy", "plot_curves", "plot_group", "plot_confusion",
           "plot_mistakes"]


MISTAKES_SHOWN = 12


def pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std`` as tables and figures show it."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"



def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def _colors(summary: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(summary["variant_order"])}


def _chance(summary: dict[str, Any]) -> float | None:
    classes = summary.get("class_names")
    return 1.0 / len(classes) if classes else None


def plot_accuracy(plt: Any, summary: dict[str, Any]) -> bytes:
    done = [v for v in summary["variants"] if v["finished"]][::-1]  # best at the top
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(done) + 1.3))
    ys = range(len(done))
    means = [v["test_acc_mean"] for v in done]
    colors = ["#2b6cb0" if v["name"] == summary["best_variant"] else "#90b4de" for v in done]
    ax.barh(ys, means, xerr=[v["test_acc_std"] or 0.0 for v in done], color=colors, height=0.62,
            error_kw={"ecolor": "#333", "capsize": 3, "lw": 1})
    for y, v in zip(ys, done):
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
    ax.set_xlabel("final test accuracy (bar: mean over seeds, line: ± std, dots: seeds)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title("Accuracy by variant", loc="left", fontsize=11)
    return _png(fig)


def plot_curves(plt: Any, summary: dict[str, Any]) -> bytes:
    colors = _colors(summary)
    fig, ax = plt.subplots(figsize=(8, 4.6))
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
    ax.set_ylabel("test accuracy")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8.5, frameon=False,
              title="variant (final mean)", title_fontsize=8.5)
    ax.set_title("Learning curves: test accuracy per epoch (line: mean over seeds, band: min-max)",
                 loc="left", fontsize=11)
    return _png(fig)


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


def plot_group(plt: Any, summary: dict[str, Any], title: str, names: list[str]) -> bytes | None:
    by_name = {v["name"]: v for v in summary["variants"]}
    members = [by_name[n] for n in names if by_name[n]["finished"]]
    if not members:
        return None
    key, labels = _group_labels(summary, members)
    colors = _colors(summary)
    fig, ax = plt.subplots(figsize=(max(3.6, 1.0 * len(members) + 1.4), 3.2))
    xs = list(range(len(members)))
    ax.plot(xs, [v["test_acc_mean"] for v in members], "-", color="#2b6cb0", lw=1.5, zorder=1)
    for x, v in zip(xs, members):
        ax.errorbar([x], [v["test_acc_mean"]], yerr=[v["test_acc_std"] or 0.0], fmt="o", ms=6, capsize=4,
                    color=colors[v["name"]], zorder=3)
        ax.plot([x + 0.08] * len(v["runs"]), [r["test_acc"] for r in v["runs"]], ".", color="#1a202c",
                alpha=0.6, ms=4, zorder=2)
        if v["zero_shot_acc_mean"] is not None:
            ax.plot([x - 0.08], [v["zero_shot_acc_mean"]], "o", mfc="white", color=colors[v["name"]], ms=6,
                    label="zero-shot (before training)")
    ax.set_xticks(xs, labels, fontsize=8.5)
    ax.set_xlim(-0.5, len(members) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, loc="left", fontsize=10.5)
    if any(v["zero_shot_acc_mean"] is not None for v in members):
        ax.legend(fontsize=7.5, frameon=False, loc="best")
    return _png(fig)


def plot_confusion(plt: Any, confusion: list[list[int]], classes: list[str], title: str) -> bytes:
    n = len(classes)
    size = max(3.4, 0.55 * n + 2.2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(confusion, cmap="Blues")
    if n <= 20:
        peak = max(max(row) for row in confusion) or 1
        for i, row in enumerate(confusion):
            total = sum(row) or 1
            for j, count in enumerate(row):
                ax.text(j, i, f"{count}\n{100 * count / total:.0f}%", ha="center", va="center", fontsize=9,
                        color="white" if count > peak / 2 else "#1a202c")
    ax.set_xticks(range(n), classes, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, loc="left", fontsize=10)
    return _png(fig)


def plot_mistakes(plt: Any, mistakes: list[dict[str, Any]]) -> bytes | None:
    from .images import load_rgb

    shown = mistakes[:MISTAKES_SHOWN]
    if not shown:
        return None
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, shown):
        image = load_rgb(m["path"])
        image.thumbnail((224, 224))
        ax.imshow(image)
        ax.set_title(f"true: {m['true']}\npred: {m['pred']} ({100 * m['confidence']:.0f}%)", fontsize=8.5,
                     color="#9b2c2c")
    fig.tight_layout()
    return _png(fig)


