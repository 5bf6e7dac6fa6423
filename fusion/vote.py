"""``mer fuse vote``: combine the predictions of several runs or rounds into one submission.

Inputs are ``mer fuse predict`` outputs: a predictions file (``name,discrete``) with its
probabilities beside it (``<stem>_probs.csv``: ``name,<class>...``), or the probabilities file
itself. ``majority`` counts the predicted classes (ties go to the tied class with the highest mean
probability when every input has probabilities, else to the earliest file's choice among them);
``mean`` averages the probabilities and takes the argmax; ``weighted`` averages them with weights
fitted on the runs' out-of-fold predictions (:mod:`mer.fusion.weighting`).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VOTE_METHODS = ("majority", "mean", "weighted")


@dataclass
class Prediction:
    """One input: predicted class per clip, and probabilities when available."""

    path: Path
    discrete: dict[str, str]
    classes: list[str] | None
    probs: dict[str, np.ndarray] | None


def _probs_file(path: Path) -> Path | None:
    if path.stem.endswith("_probs"):
        return path
    beside = path.with_name(path.stem + "_probs.csv")
    return beside if beside.is_file() else None


def read_prediction(path: Path) -> Prediction:
    """Read a predictions file and, when present, its probabilities."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    probs_path = _probs_file(path)
    discrete: dict[str, str] = {}
    classes = probs = None
    if probs_path is not None:
        with open(probs_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0] != "name" or len(header) < 3:
                raise ValueError(f"{probs_path}: expected a header name,<class>,<class>..., got {header}")
            classes = header[1:]
            probs = {}
            for line, row in enumerate(reader, start=2):
                try:
                    probs[row[0]] = np.array([float(v) for v in row[1:]], np.float64)
                except (ValueError, IndexError):
                    raise ValueError(f"{probs_path}, line {line}: not a row of {len(classes)} numbers") from None
                if len(probs[row[0]]) != len(classes):
                    raise ValueError(f"{probs_path}, line {line}: {len(probs[row[0]])} values for "
                                     f"{len(classes)} classes")
    if probs_path == path:
        discrete = {n: classes[int(p.argmax())] for n, p in probs.items()}
    else:
        from mer.store.tables import read_labels

        discrete = read_labels(path)
        if probs is not None and set(probs) != set(discrete):
            raise ValueError(f"{path} and {probs_path} list different clips")
    return Prediction(path, discrete, classes, probs)


def check_same_clips(preds: list[Prediction]) -> list[str]:
    """The clip names of the first input; refuses inputs that predict other clips."""
    names = list(preds[0].discrete)
    for p in preds[1:]:
        if set(p.discrete) != set(names):
            only_a = sorted(set(names) - set(p.discrete))
            only_b = sorted(set(p.discrete) - set(names))
            raise ValueError(f"{preds[0].path} and {p.path} predict different clips: {len(only_a)} only in the "
                             f"first (e.g. {', '.join(only_a[:3])}), {len(only_b)} only in the second "
                             f"(e.g. {', '.join(only_b[:3])})")
    return names


def stacked_probs(preds: list[Prediction], names: list[str]) -> tuple[np.ndarray, list[str]]:
    """``[R, N, C]`` probabilities of every input on ``names`` and the shared class list.

    Refuses inputs without probabilities or with other classes (or another class order).
    """
    lacking = [str(p.path) for p in preds if p.probs is None]
    if lacking:
        raise ValueError(f"probabilities needed; none beside {', '.join(lacking)} "
                         f"(mer fuse predict writes <stem>_probs.csv)")
    classes = preds[0].classes
    for p in preds[1:]:
        if p.classes != classes:
            raise ValueError(f"{p.path}: classes {p.classes} differ from {preds[0].path}: {classes}")
    return np.stack([np.stack([p.probs[n] for n in names]) for p in preds]), list(classes)


def vote(paths: list[Path], method: str = "majority") -> tuple[list[str], list[str], np.ndarray | None, list[str]]:
    """Combine predictions; returns ``(names, predicted classes, mean probabilities or None, classes)``.

    ``weighted`` needs the runs behind the inputs: :func:`mer.fusion.weighting.weighted_vote`.
    """
    if method not in VOTE_METHODS or method == "weighted":
        hint = " (weighted: mer.fusion.weighting.weighted_vote, with the runs)" if method == "weighted" else ""
        raise ValueError(f"vote method must be one of majority, mean, got {method!r}{hint}")
    if len(paths) < 2:
        raise ValueError("vote needs at least two prediction files")
    preds = [read_prediction(p) for p in paths]
    names = check_same_clips(preds)
    have_probs = all(p.probs is not None for p in preds)
    if have_probs:
        stacked, classes = stacked_probs(preds, names)
        mean = stacked.mean(0)
    elif method == "mean":
        lacking = [str(p.path) for p in preds if p.probs is None]
        raise ValueError(f"mean voting needs probabilities; none beside {', '.join(lacking)} "
                         f"(mer fuse predict writes <stem>_probs.csv)")
    else:
        classes = sorted({c for p in preds for c in p.discrete.values()})
        mean = None
    if method == "mean":
        out = [classes[int(row.argmax())] for row in mean]
    else:
        out = []
        for i, n in enumerate(names):
            counts = Counter(p.discrete[n] for p in preds)
            top = max(counts.values())
            tied = [c for c, v in counts.items() if v == top]
            if len(tied) > 1 and mean is not None:
                tied.sort(key=lambda c: -mean[i, classes.index(c)])
            elif len(tied) > 1:
                tied.sort(key=lambda c: next(k for k, p in enumerate(preds) if p.discrete[n] == c))
            out.append(tied[0])
    log.info("voted %d clips over %d files (%s)", len(names), len(preds), method)
    return names, out, mean, classes
