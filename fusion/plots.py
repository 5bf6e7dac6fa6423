"""PNG figures for fusion runs: confusion matrices, learning curves and comparison bars.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so nothing here opens a window, touches global pyplot state or needs a display.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

DPI = 120
HISTORY_KEYS = ("train_loss", "val_loss", "val_waf")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    log.info("wrote %s", path)
    return path


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "") -> Path:
    """Row-normalised confusion heat map with the raw counts written in each cell.

    Args:
        confusion: square count matrix, rows = true class, columns = predicted class, both in
            ``classes`` order (as in :func:`mer.fusion.metrics.classification_report`).
        classes: class names.
        path: PNG file to write (parent folders are created).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: the matrix is not ``len(classes)`` x ``len(classes)``.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {cm.shape}, expected ({k}, {k}) for classes {classes}")
    totals = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros(cm.shape, dtype=np.float64), where=totals > 0)

    side = max(4.0, 0.75 * k + 2.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=[f"{c} ({int(t)})" for c, t in zip(classes, totals.ravel())])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (support)")
    fontsize = 9 if k <= 8 else 7
    for i in range(k):
        for j in range(k):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                    color=colour, fontsize=fontsize)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_learning_curves(histories: list[dict[str, list[float]]], path: Path, title: str = "") -> Path:
    """Loss and validation-WAF curves per epoch, one line per fold.

    Args:
        histories: one dict per fold with any of ``train_loss``, ``val_loss`` and ``val_waf``
            (one value per epoch); missing keys are skipped.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: no histories, or none of them has any of the known keys.
    """
    if not histories:
        raise ValueError("no fold histories to plot")
    if not any(h.get(key) for h in histories for key in HISTORY_KEYS):
        raise ValueError(f"histories have none of {', '.join(HISTORY_KEYS)}")
    fig = _new_figure(11.0, 4.2)
    ax_loss = fig.add_subplot(1, 2, 1)
    ax_waf = fig.add_subplot(1, 2, 2)
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for i, (hist, colour) in enumerate(zip(histories, colours)):
        for key, style, ax in (("train_loss", "-", ax_loss), ("val_loss", "--", ax_loss),
                               ("val_waf", "-", ax_waf)):
            values = hist.get(key)
            if not values:
                continue
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, np.asarray(values, dtype=np.float64), style, color=colour,
                    label=f"fold {i} {key.replace('_', ' ')}", linewidth=1.4)
    ax_loss.set_title("loss (solid: train, dashed: val)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_waf.set_title("validation WAF")
    ax_waf.set_xlabel("epoch")
    ax_waf.set_ylabel("weighted F1")
    for ax in (ax_loss, ax_waf):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_lines():
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_bars(values: dict[str, float], path: Path, ylabel: str, title: str = "") -> Path:
    """Bar chart of one number per run (e.g. mean WAF per fusion model), value written on each bar.

    Args:
        values: ``label -> value``, drawn in dict order.
        path: PNG file to write.
        ylabel: y-axis label.
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no values to plot")
    labels = [str(k) for k in values]
    heights = np.asarray([float(v) for v in values.values()], dtype=np.float64)
    fig = _new_figure(max(4.0, 0.7 * len(labels) + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    bars = ax.bar(x, heights, color=[f"C{i % 10}" for i in range(len(labels))])
    ax.bar_label(bars, labels=[f"{h:.3f}" for h in heights], fontsize=8, padding=2)
    long = max(len(s) for s in labels) > 8
    ax.set_xticks(x, labels=labels, rotation=30 if long else 0, ha="right" if long else "center",
                  rotation_mode="anchor")
    ax.set_ylabel(ylabel)
    top = float(np.nanmax(heights)) if np.isfinite(heights).any() else 1.0
    if top > 0:
        ax.set_ylim(min(0.0, float(np.nanmin(heights))), top * 1.12)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)
