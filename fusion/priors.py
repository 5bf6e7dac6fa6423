"""Label-shift correction: estimate the class priors of an unlabelled set, re-weight the posteriors.

Under label shift the class-conditional feature distributions stay fixed while the class priors
change between training data and test data: ``p_test(x|y) = p_train(x|y)``, ``p_test(y) != p_train(y)``.
A classifier's posteriors then carry the training priors, and re-weighting them by
``p_test(y) / p_train(y)`` (then renormalising) gives the Bayes posteriors under the test priors.
The test priors are unknown; two estimators get them from the model's predictions on the
unlabelled set alone:

- **EM** (Saerens, Latinne & Decaestecker 2002): alternate re-weighting the posteriors with the
  current prior estimate and setting the estimate to the mean re-weighted posterior; a fixed point
  of the likelihood of the unlabelled set. Needs calibrated posteriors, so the probabilities are
  first calibrated on the run's out-of-fold predictions (:func:`fit_calibration`) for the
  estimate; the final re-weighting applies to the model's own posteriors.
- **BBSE** (Lipton, Wang & Smola 2018): with the out-of-fold confusion matrix of the hard
  predictions ``C[i, j] = P_train(pred = i, y = j)`` and the predicted-class frequencies on the
  unlabelled set ``mu[i]``, the weights ``w = p_test / p_train`` solve ``C w = mu``; solved here
  with non-negative least squares. Needs no calibration, only an invertible confusion matrix.
- **given**: priors the user knows, e.g. from the challenge's description of its test set.

All functions work on plain arrays; :func:`correct` ties them to a run's out-of-fold predictions.
:func:`training_side` gives what may describe one fold model without its own validation labels
(self-training corrects fold *k*'s pool posteriors with it, see ``selftrain.py``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("none", "em", "bbse", "given")
_EPS = 1e-12


def _normalise(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 0.0, None)
    total = p.sum()
    if total <= 0:
        raise ValueError("priors sum to zero")
    return p / total


def adjust_posteriors(probs: np.ndarray, train_priors: np.ndarray, target_priors: np.ndarray) -> np.ndarray:
    """Re-weight posteriors from the training priors to the target priors (rows renormalised).

    Args:
        probs: ``[N, C]`` posteriors of a model trained under ``train_priors``.
        train_priors: ``[C]`` class priors of the training data (what the model learnt).
        target_priors: ``[C]`` class priors of the set the rows come from.

    Returns:
        ``[N, C]`` float64 posteriors under ``target_priors``.
    """
    probs = np.asarray(probs, np.float64)
    w = _normalise(target_priors) / np.maximum(_normalise(train_priors), _EPS)
    out = probs * w[None, :]
    return out / np.maximum(out.sum(1, keepdims=True), _EPS)


def em_priors(probs: np.ndarray, train_priors: np.ndarray, max_iter: int = 5000,
              tol: float = 1e-7) -> tuple[np.ndarray, int]:
    """Saerens-Latinne-Decaestecker EM estimate of the priors of the rows of ``probs``.

    Args:
        probs: ``[N, C]`` (calibrated) posteriors on the unlabelled set.
        train_priors: ``[C]`` priors the model was trained under (the starting point).
        max_iter: iteration cap.
        tol: stop when the priors move less than this (L1) in one step.

    Returns:
        ``(priors [C], iterations)``.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"need a non-empty [N, C] probability matrix, got shape {probs.shape}")
    p_train = _normalise(train_priors)
    prior = p_train.copy()
    for it in range(1, max_iter + 1):
        post = adjust_posteriors(probs, p_train, prior)
        new = post.mean(0)
        if np.abs(new - prior).sum() < tol:
            return new, it
        prior = new
    log.warning("EM prior estimation did not converge in %d iterations", max_iter)
    return prior, max_iter


def bbse_priors(oof_pred: np.ndarray, oof_true: np.ndarray, target_pred: np.ndarray,
                n_classes: int) -> np.ndarray:
    """Black-box shift estimate of the target priors from hard predictions.

    Args:
        oof_pred: ``[M]`` predicted class indices on labelled held-out data (out-of-fold).
        oof_true: ``[M]`` their true class indices.
        target_pred: ``[N]`` predicted class indices on the unlabelled set.
        n_classes: C.

    Returns:
        ``[C]`` estimated target priors.
    """
    from scipy.optimize import nnls

    oof_pred, oof_true = np.asarray(oof_pred, np.int64), np.asarray(oof_true, np.int64)
    conf = np.zeros((n_classes, n_classes), np.float64)
    np.add.at(conf, (oof_pred, oof_true), 1.0)
    conf /= max(len(oof_true), 1)
    mu = np.bincount(np.asarray(target_pred, np.int64), minlength=n_classes).astype(np.float64)
    mu /= max(mu.sum(), 1.0)
    cond = np.linalg.cond(conf)
    if not np.isfinite(cond) or cond > 1e6:
        log.warning("BBSE: the out-of-fold confusion matrix is ill-conditioned (cond %.3g); the estimate "
                    "is unreliable", cond)
    w, _ = nnls(conf, mu)
    p_train = conf.sum(0)  # true-class frequencies of the held-out data
    est = w * p_train
    if est.sum() <= 0:
        log.warning("BBSE found no positive weights; falling back to the training priors")
        return _normalise(p_train)
    return _normalise(est)


@dataclass
class Calibration:
    """Bias-corrected temperature scaling: ``softmax(log(p) / temperature + bias)``.

    Plain temperature scaling moves the mean posterior away from the class frequencies, which EM
    then reads as a prior shift and runs away with; the per-class bias (fitted jointly, by the
    same likelihood) keeps the calibrated mean posterior equal to the class frequencies
    (Alexandari, Kundaje & Shrikumar 2020, "BCTS").
    """

    temperature: float = 1.0
    bias: np.ndarray | None = None  # [C], sums to 0

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        z = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0)) / self.temperature
        if self.bias is not None:
            z = z + self.bias[None, :]
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)


def fit_calibration(probs: np.ndarray, y: np.ndarray, bias: bool = True) -> Calibration:
    """Fit :class:`Calibration` by minimising the negative log-likelihood of labelled ``probs``."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))
    y = np.asarray(y, np.int64)
    n, c = logp.shape
    onehot = np.eye(c)[y]

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t = np.exp(-theta[0])
        b = theta[1:] if bias else np.zeros(c)
        z = logp * inv_t + b
        z = z - z.max(1, keepdims=True)
        lse = np.log(np.exp(z).sum(1))
        p = np.exp(z - lse[:, None])
        loss = float((lse - z[np.arange(n), y]).mean())
        diff = (p - onehot) / n  # d loss / d z
        g_t = float((diff * logp).sum() * -inv_t)
        grad = np.concatenate([[g_t], diff.sum(0)]) if bias else np.array([g_t])
        return loss, grad

    theta0 = np.zeros(1 + (c if bias else 0))
    res = minimize(nll, theta0, jac=True, method="L-BFGS-B",
                   bounds=[(np.log(0.05), np.log(20.0))] + [(-20.0, 20.0)] * (c if bias else 0))
    b = res.x[1:] - res.x[1:].mean() if bias else None
    return Calibration(float(np.exp(res.x[0])), b)


def parse_priors(text: str, classes: list[str]) -> np.ndarray:
    """``"neutral=0.2,happy=0.3,..."`` -> normalised ``[C]`` priors; unnamed classes get 0 only if
    every other class is named (an error otherwise, listing them)."""
    given: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--priors: {part!r} is not class=value")
        if key not in classes:
            raise ValueError(f"--priors: unknown class {key!r}; the run's classes are {', '.join(classes)}")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--priors: {part!r}: {raw!r} is not a number") from None
        if value < 0 or not np.isfinite(value):
            raise ValueError(f"--priors: {key}={raw} must be a finite number >= 0")
        given[key] = value
    missing = [c for c in classes if c not in given]
    if missing:
        raise ValueError(f"--priors: no value for {', '.join(missing)} (give every class, 0 where absent)")
    return _normalise(np.array([given[c] for c in classes]))


@dataclass
class OutOfFold:
    """A run's out-of-fold predictions on its labelled clips (``oof_predictions.csv``)."""

    names: list[str]
    y: np.ndarray  # [M] true class index
    probs: np.ndarray  # [M, C] out-of-fold ensemble-member probabilities
    classes: list[str]
    model_priors: np.ndarray | None = None  # priors the models learnt, when not the label frequencies
    # (a run trained with class_weights learns uniform priors)
    fold: np.ndarray | None = None  # [M] the fold whose model predicted each row (its validation fold)

    def subset(self, rows: np.ndarray) -> OutOfFold:
        """The rows ``rows`` only (one fold's validation predictions), same learnt priors."""
        return OutOfFold([self.names[i] for i in rows], self.y[rows], self.probs[rows], self.classes,
                         self.priors, None)

    @property
    def priors(self) -> np.ndarray:
        """The priors the fold models learnt: ``model_priors``, else the labelled clips' frequencies."""
        if self.model_priors is not None:
            return _normalise(self.model_priors)
        return np.bincount(self.y, minlength=len(self.classes)).astype(np.float64) / max(len(self.y), 1)


def training_side(oof: OutOfFold, k: int, inner: tuple[list[str], np.ndarray] | None = None) -> OutOfFold:
    """Held-out predictions that describe fold ``k``'s model using only its training side.

    Fold ``k``'s validation labels must not decide anything that fold ``k`` then trains on (its
    self-training pseudo-labels), or its reported validation metrics are optimistic. So:

    - with ``inner`` (``(names, probs)``: fold ``k``'s own model on its inner split, training
      clips it held out to pick its epoch; ``fold<k>.pt`` ``inner_names``/``inner_probs``), those
      predictions, with their labels from ``oof``: the very model, on clips it never fitted;
    - else the out-of-fold predictions of the other folds' models on fold ``k``'s training clips
      (other models, and they trained on fold ``k``'s validation clips, so a weaker and not fully
      independent description; runs with ``select`` ``outer``/``last`` have no inner split).

    The training priors are the label frequencies of fold ``k``'s training side (uniform when the
    run weighted its loss by class, ``oof.model_priors``).

    Args:
        oof: the run's out-of-fold predictions, with ``fold`` set.
        k: the fold.
        inner: fold ``k``'s inner-split clip names and ``[M, C]`` probabilities, or ``None``.

    Raises:
        ValueError: ``oof`` without fold numbers, an inner clip that is not a labelled clip of fold
            ``k``'s training side, or no held-out rows at all.
    """
    if oof.fold is None:
        raise ValueError("the out-of-fold predictions carry no fold numbers; cannot tell a fold's training side")
    train_rows = np.flatnonzero(oof.fold != k)
    if len(train_rows) == 0:
        raise ValueError(f"fold {k}: no out-of-fold rows outside its validation set")
    if oof.model_priors is not None:
        priors = _normalise(oof.model_priors)
    else:
        priors = np.bincount(oof.y[train_rows], minlength=len(oof.classes)).astype(np.float64) / len(train_rows)
    if inner is None:
        return OutOfFold([oof.names[i] for i in train_rows], oof.y[train_rows], oof.probs[train_rows], oof.classes,
                         priors, oof.fold[train_rows])
    names, probs = [str(n) for n in inner[0]], np.asarray(inner[1], np.float64)
    position = {n: i for i, n in enumerate(oof.names)}
    rows = np.array([position.get(n, -1) for n in names], np.int64)
    bad = [n for n, r in zip(names, rows) if r < 0 or oof.fold[r] == k]
    if bad:
        raise ValueError(f"fold {k}: {len(bad)} inner-split clips are not labelled training clips of the fold "
                         f"(first: {', '.join(bad[:5])})")
    if len(rows) == 0 or probs.shape != (len(rows), len(oof.classes)):
        raise ValueError(f"fold {k}: inner-split probabilities of shape {probs.shape} for {len(rows)} clips")
    return OutOfFold(names, oof.y[rows], probs, oof.classes, priors, None)


def read_oof(path: Path, classes: list[str], class_weights: bool = False) -> OutOfFold:
    """Read ``oof_predictions.csv`` (``name,label,discrete,<class probabilities>``).

    ``class_weights``: the run weighted its loss by inverse class frequency, so its models learnt
    uniform priors.
    """
    names, ys, rows = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            names.append(row["name"])
            ys.append(classes.index(row["label"]))
            rows.append([float(row[c]) for c in classes])
    uniform = np.full(len(classes), 1.0 / len(classes)) if class_weights else None
    return OutOfFold(names, np.asarray(ys, np.int64), np.asarray(rows, np.float64).reshape(-1, len(classes)),
                     classes, uniform)


@dataclass
class PriorCorrection:
    """The outcome of a correction: estimated priors next to the training priors, and new posteriors."""

    method: str
    classes: list[str]
    train_priors: np.ndarray
    priors: np.ndarray
    probs: np.ndarray  # [N, C] corrected posteriors
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready summary (no per-clip data)."""
        return {"method": self.method, "classes": self.classes,
                "train_priors": per_class(self.train_priors, self.classes),
                "estimated_priors": per_class(self.priors, self.classes),
                "predicted_before": predicted_shares(self.details.get("pred_before"), self.classes),
                "predicted_after": predicted_shares(self.probs.argmax(1), self.classes),
                **{k: v for k, v in self.details.items() if k != "pred_before"}}


def per_class(values: np.ndarray, classes: list[str], digits: int = 6) -> dict[str, float]:
    """``[C]`` numbers as a JSON-ready ``class -> value`` dict, rounded."""
    return {c: round(float(v), digits) for c, v in zip(classes, values)}


def predicted_shares(pred: np.ndarray | None, classes: list[str], digits: int = 6) -> dict[str, float] | None:
    """Share of each class among the class indices ``pred`` (``None`` when there are none)."""
    if pred is None or len(pred) == 0:
        return None
    return per_class(np.bincount(np.asarray(pred, np.int64), minlength=len(classes)) / len(pred), classes, digits)


def _estimate(probs: np.ndarray, method: str, oof: OutOfFold, calibrate: bool) -> tuple[np.ndarray, dict]:
    """Priors of the rows of ``probs`` (one model's posteriors) from that model's held-out predictions."""
    train = oof.priors
    if method == "em":
        calib = fit_calibration(oof.probs, oof.y) if calibrate and len(oof.y) else Calibration()
        priors, iterations = em_priors(calib(probs), train)
        return priors, {"temperature": round(calib.temperature, 4), "iterations": iterations}
    return bbse_priors(oof.probs.argmax(1), oof.y, probs.argmax(1), len(oof.classes)), {}


def correct(probs: np.ndarray, method: str, oof: OutOfFold, given: np.ndarray | None = None,
            calibrate: bool = True, fold_probs: np.ndarray | None = None) -> PriorCorrection:
    """Estimate the priors of the rows of ``probs`` with ``method`` and re-weight them.

    Args:
        probs: ``[N, C]`` ensemble posteriors on the unlabelled (test or pool) set.
        method: ``none``, ``em``, ``bbse`` or ``given``.
        oof: the run's out-of-fold predictions (training priors, calibration, BBSE confusion).
        given: ``[C]`` priors for ``method="given"``.
        calibrate: EM only: calibrate the posteriors on held-out predictions (bias-corrected
            temperature scaling) before estimating, as EM assumes calibrated posteriors. The
            re-weighting itself applies to the posteriors as given, so that target priors equal
            to the training priors change no prediction.
        fold_probs: ``[K, N, C]`` each fold model's posteriors. With them (and ``oof.fold``), each
            fold model's priors are estimated from its own validation predictions — the confusion
            matrix and calibration then describe the very model whose outputs they correct — and
            the K estimates are averaged (their spread is reported). Fine for a separate test set;
            a pool the folds then train on must not see fold *k*'s validation labels: self-training
            uses :func:`training_side` per fold instead. Without them the ensemble's
            posteriors are treated as one model described by the pooled out-of-fold predictions.

    Returns:
        A :class:`PriorCorrection`; with ``none`` the posteriors are returned unchanged.
    """
    if method not in METHODS:
        raise ValueError(f"prior correction must be one of {', '.join(METHODS)}, got {method!r}")
    probs = np.asarray(probs, np.float64)
    train = oof.priors
    details: dict = {"n": int(len(probs)), "pred_before": probs.argmax(1)}
    if method == "none":
        return PriorCorrection(method, oof.classes, train, train.copy(), probs, details)
    if method == "given":
        if given is None:
            raise ValueError("prior correction 'given' needs priors (--priors class=value,...)")
        priors = _normalise(given)
    elif fold_probs is not None and oof.fold is not None and len(fold_probs) == len(np.unique(oof.fold)):
        folds = np.unique(oof.fold)
        estimates = []
        for k, fp in zip(folds, fold_probs):
            est, info = _estimate(np.asarray(fp, np.float64), method, oof.subset(np.flatnonzero(oof.fold == k)),
                                  calibrate)
            estimates.append(est)
        priors = _normalise(np.mean(estimates, axis=0))
        details["per_fold"] = True
        details["fold_std"] = per_class(np.std(estimates, axis=0), oof.classes, 4)
    else:
        priors, info = _estimate(probs, method, oof, calibrate)
        details.update(info)
        details["per_fold"] = False
    return PriorCorrection(method, oof.classes, train, priors, adjust_posteriors(probs, train, priors), details)
