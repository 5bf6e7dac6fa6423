"""Weighted late fusion (``mer fuse vote --method weighted --runs A --runs B ...``).

Each run's out-of-fold probabilities (``oof_predictions.csv``: every labelled clip predicted by
the fold model that did not train on it) choose non-negative weights ``w`` summing to 1 that
minimise the out-of-fold log-loss of the mixture

    L(w) = -1/N Σ_i log Σ_r w_r p_r(y_i | x_i),

a convex problem on the simplex (solved with SLSQP from equal weights). Log-loss rather than WAF:
it is smooth, uses the whole probability and not only the argmax, so it neither jumps between
ties nor rewards over-fitting a few borderline clips. A run that adds nothing (pure noise) gets
weight 0 at the optimum. The weights are then applied to the runs' test predictions (``mer fuse
predict`` outputs with ``_probs.csv``): ``p(c) = Σ_r w_r p_r(c)``. Only the runs' out-of-fold
predictions on their labelled training clips enter the fit; test labels are never read.

The runs must share their out-of-fold clips (same names, same labels) and class list; anything
else is refused. The out-of-fold figures of the weighted mixture reported beside the weights are
measured on the clips that chose the weights (slightly optimistic).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import classification_report
from .vote import check_same_clips, read_prediction, stacked_probs

log = logging.getLogger(__name__)

EPS = 1e-6  # floor of a mixture's true-class probability in the log-loss (OOF files keep 6 decimals)


@dataclass
class RunOOF:
    """A run's out-of-fold predictions."""

    run: Path
    names: list[str]
    labels: np.ndarray  # [N] class index
    probs: np.ndarray  # [N, C]
    classes: list[str]


def read_run_oof(run_dir: Path) -> RunOOF:
    """The out-of-fold predictions of a run (a self-training folder: its best round)."""
    from .predict import load_run, resolve_run
    from .priors import read_oof

    run_dir = resolve_run(Path(run_dir))
    classes = list(load_run(run_dir)["classes"])
    path = run_dir / "oof_predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no oof_predictions.csv (written by mer fuse train); "
                                f"weighted voting fits its weights on it")
    oof = read_oof(path, classes)
    return RunOOF(run_dir, list(oof.names), oof.y, oof.probs, classes)


def align_oof(oofs: list[RunOOF]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """``(names, labels [N], probs [R, N, C], classes)`` of runs that share clips, labels and classes.

    Refuses runs whose class lists (or order), out-of-fold clip sets or labels differ.
    """
    first = oofs[0]
    for o in oofs[1:]:
        if o.classes != first.classes:
            raise ValueError(f"runs {first.run} and {o.run} have different class lists: {first.classes} vs "
                             f"{o.classes}; weighted voting needs the same classes in the same order")
        if set(o.names) != set(first.names):
            only_a = sorted(set(first.names) - set(o.names))
            only_b = sorted(set(o.names) - set(first.names))
            raise ValueError(f"runs {first.run} and {o.run} have different out-of-fold clips: {len(only_a)} only in "
                             f"the first (e.g. {', '.join(only_a[:3])}), {len(only_b)} only in the second (e.g. "
                             f"{', '.join(only_b[:3])}); weights need the same labelled clips")
    names = list(first.names)
    rows = [{n: i for i, n in enumerate(o.names)} for o in oofs]
    y = first.labels
    for o, pos in zip(oofs[1:], rows[1:]):
        other = o.labels[[pos[n] for n in names]]
        if not np.array_equal(other, y):
            bad = [names[i] for i in np.flatnonzero(other != y)[:3]]
            raise ValueError(f"runs {first.run} and {o.run} label the same clips differently (e.g. "
                             f"{', '.join(bad)}); were they trained on the same labels?")
    probs = np.stack([o.probs[[pos[n] for n in names]] for o, pos in zip(oofs, rows)])
    return names, y, probs, list(first.classes)


def mixture_log_loss(weights: np.ndarray, probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log of the weighted mixture's probability of the true class."""
    true = probs[:, np.arange(len(y)), y]  # [R, N]
    return float(-np.mean(np.log(np.maximum(weights @ true, EPS))))


def fit_weights(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise :func:`mixture_log_loss` (``probs``: ``[R, N, C]``)."""
    from scipy.optimize import minimize

    n_runs = probs.shape[0]
    true = probs[:, np.arange(len(y)), y].astype(np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.maximum(w @ true, EPS)
        return float(-np.mean(np.log(mix))), -(true / mix).mean(1)

    res = minimize(loss, np.full(n_runs, 1.0 / n_runs), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * n_runs,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-12, "maxiter": 1000})
    if not res.success:
        log.warning("weight fit did not converge (%s); using its last weights", res.message)
    w = np.clip(res.x, 0.0, None)
    w[w < 1e-9] = 0.0
    return w / w.sum()


def _scores(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float]:
    rep = classification_report([classes[i] for i in y], [classes[i] for i in probs.argmax(1)], classes)
    true = np.maximum(probs[np.arange(len(y)), y], EPS)
    return {"log_loss": float(-np.mean(np.log(true))), "waf": rep["waf"], "accuracy": rep["accuracy"]}


def oof_weights(runs: list[Path]) -> dict[str, Any]:
    """Fit the weights of ``runs`` on their out-of-fold predictions; returns the weights report."""
    if len(runs) < 2:
        raise ValueError("weighted voting needs at least two runs (--runs A --runs B)")
    names, y, probs, classes = align_oof([read_run_oof(r) for r in runs])
    w = fit_weights(probs, y)
    mix = np.tensordot(w, probs, axes=1)
    return {"method": "weighted", "objective": "out-of-fold log-loss", "runs": [str(r) for r in runs],
            "weights": [float(v) for v in w], "classes": classes, "n_oof_clips": len(names),
            "oof": {"runs": [_scores(p, y, classes) for p in probs], "equal": _scores(probs.mean(0), y, classes),
                    "weighted": _scores(mix, y, classes)}}


def weighted_vote(predictions: list[Path], runs: list[Path], weights_json: Path | None = None
                  ) -> tuple[list[str], list[str], np.ndarray, list[str], dict[str, Any]]:
    """Weighted mean of the predictions' probabilities, weights fitted on the runs' out-of-fold predictions.

    ``predictions[r]`` is run ``runs[r]``'s ``mer fuse predict`` output (with ``_probs.csv``).
    Returns ``(names, predicted classes, weighted probabilities, classes, weights report)``; the
    report (weights, per-run and combined out-of-fold scores) also goes to ``weights_json``.
    """
    if len(predictions) != len(runs):
        raise ValueError(f"weighted voting pairs each predictions file with its run: {len(predictions)} "
                         f"predictions files but {len(runs)} runs (--runs, in the same order)")
    report = oof_weights(runs)
    preds = [read_prediction(p) for p in predictions]
    names = check_same_clips(preds)
    probs, classes = stacked_probs(preds, names)
    if classes != report["classes"]:
        raise ValueError(f"the predictions' classes {classes} differ from the runs' {report['classes']}")
    mixed = np.tensordot(np.asarray(report["weights"]), probs, axes=1)
    report["predictions"] = [str(p) for p in predictions]
    if weights_json is not None:
        Path(weights_json).parent.mkdir(parents=True, exist_ok=True)
        Path(weights_json).write_text(json.dumps(report, indent=2))
    log.info("weighted vote over %d runs: weights %s (out-of-fold log-loss %.4f, equal weights %.4f)", len(runs),
             ", ".join(f"{w:.3f}" for w in report["weights"]), report["oof"]["weighted"]["log_loss"],
             report["oof"]["equal"]["log_loss"])
    return names, [classes[int(r.argmax())] for r in mixed], mixed, classes, report
