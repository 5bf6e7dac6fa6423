"""PNG figures for label shift and self-training: priors side by side, metrics and pseudo-labels per round."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import _new_figure, _save


def plot_priors(classes: list[str], series: dict[str, list[float]], path: Path, title: str = "") -> Path:
    """Grouped bars: one group per class, one bar per prior vector (training, estimated, true...).

    Args:
        classes: class names (x axis).
        series: ``label -> [C] priors``, drawn in dict order.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path``.
    """
    if not series:
        raise ValueError("no priors to plot")
    k, m = len(classes), len(series)
    width = 0.8 / m
    fig = _new_figure(max(5.0, 0.9 * k + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(k)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (m - 1) / 2) * width, np.asarray(values, np.float64), width, label=label, color=f"C{i % 10}")
    ax.set_xticks(x, labels=classes, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("class prior")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_rounds(rounds: list[dict], classes: list[str], path: Path, title: str = "") -> Path:
    """Self-training: validation metrics per round (left), pseudo-labels added per class (right).

    Args:
        rounds: the ``rounds`` entries of ``selftrain.json`` (``round``, ``oof_waf``, ``fold_waf``,
            ``pseudo_per_class``).
        classes: class names, stacking order.
        path: PNG file to write.
        title: figure title.

    Returns:
        ``path``.
    """
    if not rounds:
        raise ValueError("no rounds to plot")
    r = np.array([row["round"] for row in rounds])
    fig = _new_figure(11.0, 4.2)
    ax_m = fig.add_subplot(1, 2, 1)
    ax_c = fig.add_subplot(1, 2, 2)
    ax_m.plot(r, [row["oof_waf"] for row in rounds], "o-", label="out-of-fold WAF (real labels)")
    mean = np.array([row["fold_waf"]["mean"] for row in rounds])
    std = np.array([row["fold_waf"]["std"] for row in rounds])
    ax_m.errorbar(r, mean, yerr=std, fmt="s--", capsize=3, label="fold WAF mean ± std")
    ax_m.set_xlabel("round (0 = supervised)")
    ax_m.set_ylabel("weighted F1")
    ax_m.set_xticks(r)
    ax_m.grid(True, alpha=0.3)
    ax_m.legend(fontsize=8)
    ax_m.set_title("validation")
    bottom = np.zeros(len(rounds))
    for i, c in enumerate(classes):
        h = np.array([row.get("pseudo_per_class", {}).get(c, 0) for row in rounds], np.float64)
        ax_c.bar(r, h, bottom=bottom, label=c, color=f"C{i % 10}")
        bottom += h
    ax_c.set_xlabel("round")
    ax_c.set_ylabel("pseudo-labelled clips (mean per fold)")
    ax_c.set_xticks(r)
    ax_c.grid(True, axis="y", alpha=0.3)
    ax_c.legend(fontsize=7, ncol=2)
    ax_c.set_title("pseudo-labels added")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
