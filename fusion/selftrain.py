"""``mer fuse selftrain``: rounds of pseudo-labelling an unlabelled pool and retraining.

Round 0 is the supervised run given as the base. Each later round:

1. the previous round's fold models predict the pool (its features must already be in the store);
2. pseudo-labels are selected: top probability over a threshold (per-class thresholds may override
   it), optionally at most ``top_k`` per class (most confident first) so that one class cannot
   flood the training set, optionally only clips every fold model agrees on;
3. every fold is retrained on its real training clips plus the pseudo-labelled clips. The folds
   are the base run's (read from its checkpoints), and pseudo-labelled clips are only ever added
   to training sets, never to validation, so the out-of-fold metrics stay on real labels only;
4. the round is recorded: pseudo-labels per class, the pool's predicted label distribution, the
   out-of-fold WAF and the per-fold WAF.

With ``source="fold"`` (the default) fold *k* of a round learns from the pseudo-labels of fold *k*
of the previous round, a model that never saw fold *k*'s validation clips, so no validation label
leaks into its own training through the pool and the rounds' metrics are comparable with round 0.
``source="ensemble"`` labels the pool with the average of all fold models (the usual recipe: fewer
wrong pseudo-labels, but every validation label has touched them, so its metrics are optimistic).

Pseudo-labels are re-selected from the whole pool each round (a clip can change class or drop
out). Rounds are compared by a score that is not the reported metric: with the base run's
``select="inner"`` (the default), the inner-split WAF of the picked epochs averaged over the folds
(every round reuses the base run's inner splits, real clips only); the out-of-fold WAF is only
reported. A base run selected otherwise (``outer``, ``last``, or made before ``select`` existed)
has no such score, and rounds are compared by their out-of-fold WAF (optimistic, logged). Rounds
stop after ``patience`` rounds without a better score; ``selftrain.json`` names the best round,
which ``mer fuse predict --run OUT`` uses.

With ``prior_correction``, fold *k*'s pool posteriors are re-weighted with fold *k*'s own prior
estimate, made from its training side only (:func:`mer.fusion.priors.training_side`: its inner
split's held-out predictions), never from fold *k*'s validation labels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mer.store import FeatureStore
from mer.store.tables import read_labels

from .config import TrainConfig
from .data import load_features
from .folds import Fold
from .models import build_model
from .predict import (attach_groups, check_store_matches, fold_checkpoints, load_run, predict_folds, resolve_run,
                      run_oof, saved_folds)
from .priors import correct, per_class, predicted_shares, training_side
from .run import clear_checkpoints, fit_folds, write_run

log = logging.getLogger(__name__)

SOURCES = ("fold", "ensemble")


@dataclass
class SelfTrainConfig:
    """How pseudo-labels are chosen and how many rounds run."""

    rounds: int = 3  # self-training rounds after the supervised base run (round 0)
    threshold: float = 0.9  # keep a pool clip when its top class probability reaches this
    class_thresholds: dict[str, float] = field(default_factory=dict)  # per-class thresholds overriding `threshold`
    top_k: int = 0  # at most this many pseudo-labels per class, most confident first (0: no cap)
    source: str = "fold"  # "fold": fold k learns from fold k's own previous model; "ensemble": from the fold average
    agreement: bool = False  # ensemble source only: every fold model must predict the same class
    prior_correction: str = "none"  # re-weight the pool posteriors for label shift before selecting: em, bbse
    patience: int = 1  # stop after this many rounds without a better out-of-fold WAF


def select_pseudo(probs: np.ndarray, classes: list[str], cfg: SelfTrainConfig,
                  votes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Choose pseudo-labels among pool rows.

    Args:
        probs: ``[P, C]`` pool posteriors.
        classes: class names (for ``class_thresholds``).
        cfg: thresholds, ``top_k``.
        votes: ``[K, P]`` each fold model's predicted class, to require agreement (or ``None``).

    Returns:
        ``(rows, labels)``: selected pool row indices (sorted) and their class indices.
    """
    unknown = sorted(set(cfg.class_thresholds) - set(classes))
    if unknown:
        raise ValueError(f"class thresholds for unknown classes {', '.join(unknown)}; classes: {', '.join(classes)}")
    pred = probs.argmax(1)
    conf = probs.max(1)
    thr = np.array([cfg.class_thresholds.get(c, cfg.threshold) for c in classes])
    keep = conf >= thr[pred]
    if votes is not None:
        keep &= (votes == pred[None, :]).all(0)
    rows = np.flatnonzero(keep)
    if cfg.top_k > 0:
        capped = []
        for c in range(len(classes)):
            rc = rows[pred[rows] == c]
            capped.append(rc[np.argsort(-conf[rc], kind="stable")[:cfg.top_k]])
        rows = np.sort(np.concatenate(capped)) if capped else rows
    return rows.astype(np.int64), pred[rows].astype(np.int64)


def _base_folds(run_dir: Path, names: list[str]) -> list[Fold]:
    """The base run's folds, from the validation (and inner-split) names saved in its checkpoints."""
    position = {n: i for i, n in enumerate(names)}
    inner = _saved_inner(run_dir)
    folds = []
    for k, val_names in saved_folds(run_dir):
        lost = [n for n in val_names if n not in position]
        if lost:
            raise ValueError(f"{run_dir / f'fold{k}.pt'}: {len(lost)} validation clips are no longer labelled or "
                             f"in the store (first: {', '.join(lost[:5])})")
        val = np.sort(np.array([position[n] for n in val_names], np.int64))
        train = np.setdiff1d(np.arange(len(names)), val).astype(np.int64)
        held = None
        if k in inner and all(n in position for n in inner[k][0]):
            held = np.sort(np.array([position[n] for n in inner[k][0]], np.int64))
        elif k in inner:
            log.warning("fold %d: inner-split clips of the base run are no longer labelled; a new inner split "
                        "is made", k)
        folds.append(Fold(k, train, val, held))
    return folds


def _saved_inner(run_dir: Path) -> dict[int, tuple[list[str], np.ndarray]]:
    """Per fold, the inner-split clip names and the fold model's held-out probabilities on them
    (checkpoints of runs trained with ``select="inner"``; other folds are absent)."""
    out = {}
    for ckpt in fold_checkpoints(run_dir):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("inner_names") and state.get("inner_probs") is not None:
            out[int(state["fold"])] = ([str(n) for n in state["inner_names"]], state["inner_probs"].numpy())
    return out


def _check_pool(store: FeatureStore, keys: list[str], pool: list[str], labelled: set[str]) -> list[str]:
    """Pool names without labelled clips; every pool clip must be in every set (else the error lists them)."""
    overlap = [n for n in pool if n in labelled]
    if overlap:
        log.warning("%d pool clips are labelled; they stay labelled and leave the pool (first: %s)",
                    len(overlap), ", ".join(overlap[:5]))
    pool = [n for n in dict.fromkeys(pool) if n not in labelled]
    if not pool:
        raise ValueError("the pool is empty (after removing labelled clips)")
    problems = []
    for k in keys:
        index = store[k].index()
        missing = [n for n in pool if n not in index]
        if missing:
            problems.append(f"  {k}: {len(missing)} of {len(pool)} pool clips not extracted "
                            f"(first: {', '.join(missing[:10])})")
    if problems:
        raise ValueError("extract the pool's features first (`mer extract ... --only POOL`):\n" + "\n".join(problems))
    return pool


def _pool_posteriors(per_fold: np.ndarray, run_dir: Path, method: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Optionally correct each fold's pool posteriors for label shift with that fold's own estimate.

    Fold *k*'s priors are estimated from its training side only (:func:`training_side`: the
    held-out predictions of its inner split, else the other folds' out-of-fold predictions on its
    training clips) and re-weight fold *k*'s posteriors only, so fold *k*'s validation labels never
    shape the pseudo-labels fold *k* then trains on. ``pool_priors`` reports the mean estimate.
    """
    if method == "none":
        return per_fold, {}
    oof = run_oof(run_dir)
    inner = _saved_inner(run_dir)
    folds = [k for k, _ in saved_folds(run_dir)]
    if len(folds) != len(per_fold):
        raise ValueError(f"{run_dir}: {len(folds)} fold checkpoints for {len(per_fold)} fold predictions")
    missing = [k for k in folds if k not in inner]
    if missing:
        log.warning("%s: folds %s have no inner-split predictions (select outer/last or an older run); their pool "
                    "priors are estimated from the other folds' out-of-fold predictions on their training clips",
                    run_dir, ", ".join(map(str, missing)))
    fixes = [correct(p, method, training_side(oof, k, inner.get(k))) for k, p in zip(folds, per_fold)]
    estimates = np.stack([f.priors for f in fixes])
    return np.stack([f.probs for f in fixes]), {
        "pool_priors": per_class(estimates.mean(0), oof.classes, 4),
        "pool_priors_per_fold": [per_class(e, oof.classes, 4) for e in estimates],
        "prior_source": "inner" if not missing else ("other folds" if len(missing) == len(folds) else "mixed")}


def run_selftrain(base_run: Path, store_path: Path, pool: list[str], out: Path, cfg: SelfTrainConfig | None = None,
                  *, labels_csv: Path | None = None, pool_labels: dict[str, str] | None = None,
                  device: str | None = None, progress: bool = True, clips_csv: Path | None = None) -> dict[str, Any]:
    """Self-train from ``base_run`` over ``pool``; write rounds, ``selftrain.json`` and a plot into ``out``.

    Args:
        base_run: a supervised run (``mer fuse train``).
        store_path: the store holding the run's sets for the labelled clips and the pool.
        pool: unlabelled clip names.
        out: output folder (``round1``, ``round2`` ... inside).
        cfg: selection and rounds.
        labels_csv: the labels the base was trained on (default: the path in its config).
        pool_labels: true labels of pool clips, only to report pseudo-label accuracy (diagnostics).
        device: training device (default: the base run's).
        progress: progress bars.
        clips_csv: clip table with the group column of a base run normalised per group, covering the
            labelled and the pool clips (default: the table the base run was trained with). Each
            group's statistics come from all its clips, labelled and pool alike.

    Returns:
        The content of ``selftrain.json``.
    """
    cfg = cfg or SelfTrainConfig()
    if cfg.source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    if cfg.agreement and cfg.source != "ensemble":
        raise ValueError("agreement between fold models needs source 'ensemble'")
    base = resolve_run(base_run)
    config = load_run(base)
    classes, keys = config["classes"], config["features"]
    store = FeatureStore(store_path, mode="r")
    check_store_matches(config, store)
    labels_path = Path(labels_csv or config["labels"])
    labels = read_labels(labels_path, classes)
    lab_names = list(labels)
    pool = _check_pool(store, keys, pool, set(lab_names))
    # a base run made before `select` existed picked its epochs on its validation folds: the rounds do the same.
    # Rounds predict (the pool, and later with `mer fuse predict`) with their fold models: their pseudo-labels
    # differ per fold, so there is no one training set for a final model
    train_cfg = TrainConfig(**{"select": "outer", **config["train"], "final": False,
                               **({"device": device} if device else {})})
    data = load_features(store, keys, lab_names + pool, train_cfg.max_frames)
    clips_csv = clips_csv or (Path(config["clips"]) if config.get("clips") else None)
    attach_groups(config, data, clips_csv, base)
    n_lab = len(lab_names)
    pool_rows = np.arange(n_lab, len(data), dtype=np.int64)
    y = np.full(len(data), -1, dtype=np.int64)
    y[:n_lab] = [classes.index(labels[n]) for n in lab_names]
    folds = _base_folds(base, lab_names)
    out.mkdir(parents=True, exist_ok=True)

    def make() -> torch.nn.Module:
        return build_model(config["model"], config["model_config"], data.dims, data.utt, len(classes))

    base_metrics = json.loads((base / "metrics.json").read_text())
    rounds = [_round_row(0, base_metrics, str(base.resolve()))]
    by = "select_score" if rounds[0]["select_score"] is not None else "oof_waf"
    if by == "oof_waf":
        log.warning("the base run has no inner split (select=%r): rounds are compared by their out-of-fold WAF, "
                    "the reported metric itself (optimistic); retrain the base with select='inner'", train_cfg.select)
    per_fold = predict_folds(base, config, data, pool_rows, train_cfg.device)
    best, stale, prev_dir = 0, 0, base
    for r in range(1, cfg.rounds + 1):
        posteriors, shift = _pool_posteriors(per_fold, prev_dir, cfg.prior_correction)
        extra, counts = _select(posteriors, classes, cfg, len(folds), n_lab)
        # what round r-1's models said about the pool
        rounds[-1].update({"pool_predicted": predicted_shares(posteriors.mean(0).argmax(1), classes, 4), **shift})
        round_dir = out / f"round{r}"
        clear_checkpoints(round_dir)
        (round_dir / "config.json").write_text(json.dumps(
            {**config, "train": asdict(train_cfg), "labels": str(labels_path),
             "clips": str(clips_csv) if clips_csv else None,
             "selftrain": {"round": r, "base": str(base.resolve()), "pool": len(pool), **asdict(cfg)}}, indent=2))
        fits = fit_folds(make, data, y, folds, classes, train_cfg, round_dir, progress=progress, extra=extra,
                         predict_rows=pool_rows)
        metrics = write_run(round_dir, config["model"], keys, data, y, fits, classes,
                            {"selftrain_round": r, "pseudo_per_class": counts})
        rounds.append(_round_row(r, metrics, f"round{r}"))
        if pool_labels:
            rounds[-1]["pseudo_accuracy"] = _pseudo_accuracy(extra, pool, n_lab, classes, pool_labels)
        log.info("round %d: %d pseudo-labels (mean per fold), out-of-fold WAF %.4f, %s %.4f (best so far %.4f, "
                 "round %d)", r, sum(counts.values()), metrics["oof"]["waf"], by, _score(rounds[-1], by),
                 _score(rounds[best], by), best)
        per_fold, prev_dir = fits.predicted, round_dir
        if _score(rounds[-1], by) > _score(rounds[best], by) + 1e-9:
            best, stale = r, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("stopping: %d round(s) without a better %s", stale, by)
                break
    posteriors, shift = _pool_posteriors(per_fold, prev_dir, cfg.prior_correction)
    rounds[-1].update({"pool_predicted": predicted_shares(posteriors.mean(0).argmax(1), classes, 4), **shift})
    summary = {"base": str(base.resolve()), "store": str(store_path), "pool": len(pool), "config": asdict(cfg),
               "classes": classes, "rounds": rounds, "best_round": best, "best_dir": rounds[best]["dir"],
               "best_by": by,  # select_score: mean inner-split WAF over folds; oof_waf: the reported metric
               "train_priors": predicted_shares(y[:n_lab], classes, 4)}
    (out / "selftrain.json").write_text(json.dumps(summary, indent=2))
    from .selftrain_plots import plot_rounds

    plot_rounds(rounds, classes, out / "selftrain.png",
                title=f"self-training from {base.name}: best round {best} (out-of-fold WAF {rounds[best]['oof_waf']:.3f})")
    return summary


def _select(posteriors: np.ndarray, classes: list[str], cfg: SelfTrainConfig, n_folds: int,
            offset: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Per fold ``(data rows, labels)`` of the pseudo-labels, and the mean count per class."""
    if cfg.source == "ensemble":
        votes = posteriors.argmax(2) if cfg.agreement else None
        rows, lab = select_pseudo(posteriors.mean(0), classes, cfg, votes)
        chosen = [(rows + offset, lab)] * n_folds
    else:
        if len(posteriors) != n_folds:
            raise ValueError(f"{len(posteriors)} fold models for {n_folds} folds")
        chosen = []
        for k in range(n_folds):
            rows, lab = select_pseudo(posteriors[k], classes, cfg)
            chosen.append((rows + offset, lab))
    counts = np.mean([np.bincount(lab, minlength=len(classes)) for _, lab in chosen], axis=0)
    return chosen, per_class(counts, classes, 2)


def _pseudo_accuracy(extra: list[tuple[np.ndarray, np.ndarray]], pool: list[str], offset: int,
                     classes: list[str], truth: dict[str, str]) -> float | None:
    hits, total = 0, 0
    for rows, lab in extra:
        for r, c in zip(rows, lab):
            name = pool[r - offset]
            if name in truth:
                total += 1
                hits += truth[name] == classes[c]
    return round(hits / total, 4) if total else None


def _round_row(r: int, metrics: dict[str, Any], where: str) -> dict[str, Any]:
    return {"round": r, "dir": where, "oof_waf": metrics["oof"]["waf"], "oof_accuracy": metrics["oof"]["accuracy"],
            "fold_waf": metrics["summary"]["waf"], "pseudo_per_class": metrics.get("pseudo_per_class", {}),
            "select_score": (metrics.get("selection") or {}).get("score")}


def _score(row: dict[str, Any], by: str) -> float:
    """A round's comparison score (``-inf`` when it has none)."""
    value = row.get(by)
    return float("-inf") if value is None else float(value)
