"""Score a MER submission file (``name,discrete``) against a label file."""

from __future__ import annotations

import logging
from pathlib import Path

from mer.store.tables import read_labels

from .metrics import classification_report

log = logging.getLogger(__name__)


def evaluate_predictions(pred_csv: Path, labels_csv: Path, classes: list[str] | None = None) -> dict:
    """Classification report of a predictions CSV against a label CSV, aligned by clip name.

    Args:
        pred_csv: predictions in the MER submission format, columns ``name,discrete``.
        labels_csv: true labels, columns ``name,discrete`` (read with
            :func:`mer.store.tables.read_labels`).
        classes: class list fixing the report order; labels outside it are an error. Default: the
            sorted union of the classes in the labels and in the (aligned) predictions.

    Returns:
        :func:`mer.fusion.metrics.classification_report` of the labelled clips (in label-file
        order), plus ``n_unlabelled`` (predictions for clips not in the label file, ignored) and
        ``n_predictions`` (rows in the predictions file).

    Raises:
        ValueError: a labelled clip has no prediction (the message gives how many and the first
            few names), or a malformed file (:class:`mer.store.tables.TableError`).
    """
    pred_csv, labels_csv = Path(pred_csv), Path(labels_csv)
    preds = read_labels(pred_csv)
    labels = read_labels(labels_csv, classes=classes)
    missing = [name for name in labels if name not in preds]
    if missing:
        raise ValueError(f"{pred_csv}: {len(missing)} of {len(labels)} labelled clips have no prediction "
                         f"(first: {', '.join(missing[:5])})")
    unlabelled = sum(1 for name in preds if name not in labels)
    if unlabelled:
        log.info("%s: ignoring %d predictions for clips not in %s", pred_csv, unlabelled, labels_csv)
    names = list(labels)
    y_true = [labels[n] for n in names]
    y_pred = [preds[n] for n in names]
    if classes is None:
        classes = sorted(set(y_true) | set(y_pred))
    report = classification_report(y_true, y_pred, list(classes))
    report["n_unlabelled"] = unlabelled
    report["n_predictions"] = len(preds)
    return report
