"""Classification metrics for fusion runs: the MER challenge metric (weighted F1, "WAF") and friends.

Every number returned here is a plain Python ``int``/``float`` so reports go straight to JSON.
The values are computed by scikit-learn and equal its ``accuracy_score``, ``f1_score`` and
``precision_recall_fscore_support`` (with ``labels=classes``; classes that are never predicted or
never present score 0, as sklearn does) and ``confusion_matrix``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("accuracy", "waf", "macro_f1")


def classification_report(y_true: Sequence[str] | np.ndarray, y_pred: Sequence[str] | np.ndarray,
                          classes: list[str]) -> dict:
    """Accuracy, weighted F1 (WAF), macro F1, per-class scores and the confusion matrix.

    Args:
        y_true: true class of each clip.
        y_pred: predicted class of each clip, same length and order as ``y_true``.
        classes: the class list; it fixes the order of ``per_class`` and of the confusion
            matrix rows (true class) and columns (predicted class). Classes that never occur
            are allowed (they get support 0 and scores 0).

    Returns:
        ``{"accuracy", "waf", "macro_f1", "per_class": {class: {"precision", "recall", "f1",
        "support"}}, "confusion": [[int]], "n"}``.

    Raises:
        ValueError: empty input, length mismatch, duplicate classes, or a true/predicted label
            that is not in ``classes``.
    """
    yt = np.asarray(y_true, dtype=object).ravel()
    yp = np.asarray(y_pred, dtype=object).ravel()
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} entries but y_pred has {len(yp)}")
    if len(yt) == 0:
        raise ValueError("cannot score an empty set of predictions")
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"duplicate classes in {classes}")
    yt = np.array([str(v) for v in yt], dtype=object)
    yp = np.array([str(v) for v in yp], dtype=object)
    known = set(classes)
    for what, values in (("true labels", yt), ("predictions", yp)):
        unknown = sorted(set(values.tolist()) - known)
        if unknown:
            raise ValueError(f"{what} contain classes not in {classes}: {', '.join(unknown)}")

    precision, recall, f1, support = precision_recall_fscore_support(
        yt, yp, labels=classes, average=None, zero_division=0)
    cm = confusion_matrix(yt, yp, labels=classes)
    report = {
        "accuracy": float(accuracy_score(yt, yp)),
        "waf": float(f1_score(yt, yp, labels=classes, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(yt, yp, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(classes)
        },
        "confusion": [[int(v) for v in row] for row in cm],
        "n": int(len(yt)),
    }
    log.debug("scored %d clips over %d classes: accuracy %.4f, WAF %.4f",
              report["n"], len(classes), report["accuracy"], report["waf"])
    return report


def summarize_folds(reports: list[dict]) -> dict:
    """Mean and population standard deviation (ddof=0) of accuracy, WAF and macro F1 over folds.

    Args:
        reports: one :func:`classification_report` result per fold.

    Returns:
        ``{"accuracy": {"mean", "std"}, "waf": {...}, "macro_f1": {...}}`` with plain floats.

    Raises:
        ValueError: no reports, or a report lacking one of the metrics.
    """
    if not reports:
        raise ValueError("no fold reports to summarise")
    summary: dict[str, dict[str, float]] = {}
    for key in SUMMARY_METRICS:
        missing = [i for i, r in enumerate(reports) if key not in r]
        if missing:
            raise ValueError(f"fold reports {missing} have no {key!r}")
        values = np.array([float(r[key]) for r in reports], dtype=np.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=0))}
    return summary
