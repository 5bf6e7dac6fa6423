"""``mer fuse train``: k-fold cross-validation of a fusion model on stored features.

The run directory holds ``config.json`` (everything needed to rebuild the models and check a
store at prediction time), ``run.yaml`` (the run's settings, paths absolute: ``mer fuse train
--config run.yaml --out NEW`` replays it, :mod:`mer.fusion.runfile`), ``fold<k>.pt``
checkpoints, with ``-T final=true`` also ``final.pt`` (one model on every labelled clip, used by
``mer fuse predict``), ``metrics.json`` (per fold, mean ± std, out-of-fold overall), ``oof_predictions.csv``,
``confusion.png`` and ``learning_curves.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mer.store import FeatureStore
from mer.store.tables import read_clip_table, read_labels, read_names

from .config import MODEL_CONFIGS, RunConfig, TrainConfig, config_from_dict
from .data import FusionData, load_features
from .folds import Fold, fixed_split, make_folds
from .metrics import classification_report, summarize_folds
from .models import build_model
from .normalize import group_values, norm_spec
from .runfile import RunSpec, write_run_yaml
from .train import predict_probs, split_select_rows, train_final, train_fold

log = logging.getLogger(__name__)

FINAL_CHECKPOINT = "final.pt"  # the model trained on every labelled clip (TrainConfig.final)


def clear_checkpoints(out: Path) -> None:
    """Make ``out`` and remove the checkpoints an earlier run left there (``fold<k>.pt``, ``final.pt``):
    a run with fewer folds, or without a final model, would otherwise predict with the old ones."""
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.glob("fold*.pt") if p.stem[4:].isdigit()] + [out / FINAL_CHECKPOINT]
    for path in stale:
        path.unlink(missing_ok=True)


def set_identity(store: FeatureStore, key: str) -> dict[str, Any]:
    """What a run remembers of a feature set, to refuse a different one at prediction time."""
    fs = store[key]
    meta = fs.meta()
    return {"level": meta["level"], "dim": int(meta["dim"]), "provenance": fs.provenance.identity()}


def clip_groups(clips_csv: Path | None, column: str | None, names: list[str]) -> np.ndarray:
    """Each clip's normalisation group from the clip table, refusing a missing table, column or clip."""
    if clips_csv is None:
        raise ValueError(f"group normalisation by {column!r} needs --clips (the clip table that holds the column)")
    table = read_clip_table(clips_csv)
    if column not in table.columns:
        raise ValueError(f"group normalisation: the clip table {clips_csv} has no column {column!r} "
                         f"(columns: {', '.join(table.columns)})")
    return group_values(table.column(column), names, str(clips_csv), column)


def resolve_folds(names: list[str], labels: list[str], n_folds: int, seed: int, groups: list[str] | None,
                  val_names: list[str] | None) -> list[Fold]:
    """Stratified, grouped, or a fixed validation list."""
    if val_names is not None:
        return fixed_split(names, val_names)
    return make_folds(labels, n_folds, groups=groups, seed=seed)


def train_run(store_path: Path, features: list[str], labels_csv: Path, out: Path, *, model: str = "agt",
              model_config: dict[str, Any] | None = None, train: TrainConfig | None = None, folds: int = 5,
              clips_csv: Path | None = None, group_col: str | None = None, val: Path | None = None,
              classes: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``model`` with k-fold CV on the labelled clips; write the run into ``out``; return metrics.

    ``clips_csv`` holds ``group_col`` (grouped folds) and, with ``train.normalize == "group"``,
    ``train.norm_col`` (per-group normalisation, :mod:`mer.fusion.normalize`).
    """
    train = train or TrainConfig()
    spec = norm_spec(train)  # refuse a bad normalisation before reading anything
    if spec.mode == "group":
        clip_groups(clips_csv, spec.col, [])  # the table and its column exist
    store = FeatureStore(store_path, mode="r")
    labels = read_labels(labels_csv, classes)
    classes = list(classes) if classes else sorted(set(labels.values()))
    names = list(labels)
    data = load_features(store, features, names, train.max_frames)
    y = np.array([classes.index(labels[n]) for n in data.names])
    if spec.mode == "group":
        data.groups = clip_groups(clips_csv, spec.col, data.names)
    groups = None
    if group_col:
        if clips_csv is None:
            raise ValueError("--group-col needs --clips (the clip table that holds the column)")
        col = read_clip_table(clips_csv).column(group_col)
        lacking = [n for n in data.names if n not in col]
        if lacking:
            raise ValueError(f"{len(lacking)} labelled clips are not in {clips_csv}: {', '.join(lacking[:10])}")
        groups = [col[n] for n in data.names]
    val_names = read_names(val) if val else None
    fold_list = resolve_folds(data.names, [classes[i] for i in y], folds, train.seed, groups, val_names)
    cfg_cls = MODEL_CONFIGS.get(model)
    if cfg_cls is None:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    resolved = dataclasses.asdict(config_from_dict(cfg_cls, model_config or {}))
    run = RunConfig(features=list(features), model=model, model_config=resolved, train=train,
                    folds=len(fold_list), group_col=group_col, classes=classes)
    clear_checkpoints(out)
    config = {**dataclasses.asdict(run), "store": str(store_path), "labels": str(labels_csv),
              "sets": {k: set_identity(store, k) for k in features}, "n_clips": len(data),
              "clips": str(clips_csv) if clips_csv else None, "val": str(val) if val else None}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_run_yaml(RunSpec(store=store_path, features=list(features), labels=labels_csv, out=out, model=model,
                           model_config=resolved, train=train, folds=folds, clips=clips_csv, group_col=group_col,
                           val=val, classes=classes), out / "run.yaml")

    def make() -> torch.nn.Module:
        return build_model(model, resolved, data.dims, data.utt, len(classes))

    fits = fit_folds(make, data, y, fold_list, classes, train, out, progress=progress,
                     groups=None if groups is None else np.asarray(groups, dtype=object))
    final = fit_final(make, data, y, fits, len(classes), train, out) if train.final else None
    return write_run(out, model, features, data, y, fits, classes,
                     extra_metrics={"final": final} if final else None)


@dataclass
class FoldFits:
    """What :func:`fit_folds` leaves besides the checkpoints it writes."""

    oof: np.ndarray  # [N, C] out-of-fold probabilities (NaN rows: never validated)
    reports: list[dict[str, Any]]  # classification report per fold
    histories: list[dict[str, list[float]]]  # learning curves per fold
    folds: list[dict[str, Any]]  # per-fold summary rows for metrics.json
    predicted: np.ndarray | None  # [K, P, C] each fold model's probabilities on ``predict_rows``
    seconds: float
    selection: dict[str, Any] | None = None  # how the epochs were picked (metrics.json "selection")


def fit_folds(make: Callable[[], torch.nn.Module], data: FusionData, y: np.ndarray, fold_list: list[Fold],
              classes: list[str], train: TrainConfig, out: Path, *, progress: bool = True,
              extra: list[tuple[np.ndarray, np.ndarray]] | None = None,
              predict_rows: np.ndarray | None = None, groups: np.ndarray | None = None) -> FoldFits:
    """Train one model per fold, save ``fold<k>.pt`` in ``out``, collect out-of-fold probabilities.

    With ``train.select == "inner"`` each fold's epoch is picked on a held-out part of its real
    training clips (``fold.inner`` when given, else :func:`~mer.fusion.train.split_select_rows`,
    grouped by ``groups``); the validation fold is predicted once and only reported. The
    checkpoints keep those inner clips' names and held-out probabilities (``inner_names``,
    ``inner_probs``): self-training reuses the split and estimates pool priors from them.

    Args:
        make: builds a fresh model.
        data: features of every row used (labelled clips, and pseudo-labelled ones if any).
        y: ``[N]`` class index of each row (-1 for rows without a real label).
        fold_list: folds over the labelled rows; validation rows are only ever real labels.
        classes: label set.
        train: training config.
        out: run directory for the checkpoints.
        progress: show a progress bar per fold.
        extra: per fold, ``(rows, labels)`` of pseudo-labelled rows added to that fold's training
            set only (self-training); they never enter validation.
        predict_rows: rows each trained fold model also predicts (the unlabelled pool).
        groups: ``[N]`` group of each row (grouped folds), for the inner splits; ``None``: stratified.
    """
    if train.select == "outer":
        log.warning("select='outer': each fold's epoch is picked on the validation fold that is then reported; "
                    "the out-of-fold metrics are optimistic")
    oof = np.full((len(data), len(classes)), np.nan, dtype=np.float32)
    reports, histories, fold_meta, predicted = [], [], [], []
    t0 = time.perf_counter()
    for fold in fold_list:
        y_fold, train_rows = y, fold.train
        if extra is not None:
            rows, labels = extra[fold.index]
            y_fold = y.copy()
            y_fold[rows] = labels
            train_rows = np.concatenate([fold.train, rows]).astype(np.int64)
        inner = None  # held-out real training clips that pick the epoch (never pseudo-labelled ones)
        if train.select == "inner":
            inner = fold.inner if fold.inner is not None else split_select_rows(
                y, fold.train, train, train.seed + fold.index, groups)
        result = _train_with_progress(make, data, y_fold, Fold(fold.index, train_rows, fold.val, inner),
                                      len(classes), train, progress, len(fold_list))
        oof[fold.val] = result.val_probs
        rep = classification_report([classes[i] for i in y[fold.val]],
                                    [classes[i] for i in result.val_probs.argmax(1)], classes)
        reports.append(rep)
        histories.append(result.history)
        fold_meta.append({"fold": fold.index, "n_train": int(len(train_rows)), "n_val": int(len(fold.val)),
                          "n_pseudo": int(len(train_rows) - len(fold.train)),
                          "best_epoch": result.best_epoch, "selection": result.selection,
                          "n_select": 0 if inner is None else int(len(inner)), "select_waf": result.select_waf,
                          "accuracy": rep["accuracy"], "waf": rep["waf"]})
        held: dict[str, Any] = {}
        if result.select_rows is not None and result.select_probs is not None:
            held = {"inner_names": [data.names[i] for i in result.select_rows],
                    "inner_probs": torch.from_numpy(np.ascontiguousarray(result.select_probs, np.float32))}
        torch.save({"state_dict": result.state_dict, "norm": result.norm.state(), "fold": fold.index,
                    "val_names": [data.names[i] for i in fold.val], "selection": result.selection, **held},
                   out / f"fold{fold.index}.pt")
        if predict_rows is not None:
            m = make()
            m.load_state_dict(result.state_dict)
            predicted.append(predict_probs(m.to(train.device), data, predict_rows, result.norm, train.device))
        log.info("fold %d: WAF %.4f acc %.4f (best epoch %d, picked on %s)", fold.index, rep["waf"], rep["accuracy"],
                 result.best_epoch, {"inner": "the inner split", "outer": "this validation fold (optimistic)",
                                     "last": "none: last epoch"}[result.selection])
    scores = [f["select_waf"] for f in fold_meta if f["select_waf"] is not None]
    selection = {"mode": train.select, "inner_frac": train.inner_frac if train.select == "inner" else None,
                 "refit": bool(train.refit) if train.select == "inner" else None,
                 "optimistic": train.select == "outer",  # the reported folds picked the epochs
                 # mean inner WAF of the picked epochs: what self-training compares rounds by
                 "score": float(np.mean(scores)) if scores and len(scores) == len(fold_meta) else None}
    return FoldFits(oof, reports, histories, fold_meta, np.stack(predicted) if predicted else None,
                    time.perf_counter() - t0, selection)


def final_epochs(fold_epochs: list[int]) -> int:
    """How long the final model trains: the median of the folds' trained epoch counts (at least 1)."""
    return max(1, int(round(float(np.median(fold_epochs)))))


def fit_final(make: Callable[[], torch.nn.Module], data: FusionData, y: np.ndarray, fits: FoldFits,
              n_classes: int, train: TrainConfig, out: Path) -> dict[str, Any]:
    """Train one model on every labelled row for :func:`final_epochs` epochs; save ``final.pt``.

    A plateau schedule steps on the folds' mean selection curve (the signal their picked models
    saw). Returns what ``metrics.json`` records under ``final``.
    """
    rows = np.flatnonzero(y >= 0)
    fold_epochs = [int(f["best_epoch"]) + 1 for f in fits.folds]
    epochs = final_epochs(fold_epochs)
    key = "select_waf" if all("select_waf" in h for h in fits.histories) else "val_waf"
    curves = [h.get(key, []) for h in fits.histories]
    signal = [float(np.mean([c[e] for c in curves if e < len(c)])) for e in range(epochs)
              if any(e < len(c) for c in curves)]
    t0 = time.perf_counter()
    res = train_final(make, data, y, rows, n_classes, train, epochs, seed=train.seed + len(fits.folds),
                      plateau_signal=signal or None)
    torch.save({"state_dict": res.state_dict, "norm": res.norm.state(), "final": True, "epochs": epochs,
                "n_train": int(len(rows))}, out / FINAL_CHECKPOINT)
    seconds = time.perf_counter() - t0
    log.info("final model: %d epochs on all %d labelled clips (%.1f s) -> %s", epochs, len(rows), seconds,
             out / FINAL_CHECKPOINT)
    return {"epochs": epochs, "n_train": int(len(rows)), "seconds": seconds,
            "fold_epochs": fold_epochs}


def write_run(out: Path, model: str, features: list[str], data: FusionData, y: np.ndarray, fits: FoldFits,
              classes: list[str], extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``metrics.json``, ``oof_predictions.csv`` and the plots of a trained run; return the metrics."""
    have = ~np.isnan(fits.oof[:, 0])
    overall = classification_report([classes[i] for i in y[have]], [classes[i] for i in fits.oof[have].argmax(1)],
                                    classes)
    metrics = {"model": model, "features": features, "folds": fits.folds, "fold_reports": fits.reports,
               "summary": summarize_folds(fits.reports), "oof": overall, "train_seconds": fits.seconds,
               **({"selection": fits.selection} if fits.selection else {}), **(extra_metrics or {})}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_oof(out / "oof_predictions.csv", data, y, fits.oof, classes, have)
    _plots(out, overall, fits.histories, classes, model)
    return metrics


def _train_with_progress(make, data: FusionData, y: np.ndarray, fold: Fold, n_classes: int, cfg: TrainConfig,
                         progress: bool, n_folds: int):
    if not progress:
        return train_fold(make, data, y, fold.train, fold.val, n_classes, cfg, seed=cfg.seed + fold.index,
                          select_rows=fold.inner)
    from rich.progress import BarColumn, Progress, TextColumn

    with Progress(TextColumn(f"fold {fold.index + 1}/{n_folds}"), BarColumn(),
                  TextColumn("epoch {task.completed}/{task.total}  val WAF {task.fields[waf]}"), transient=True) as bar:
        task = bar.add_task("train", total=cfg.epochs, waf="-")

        def tick(epoch: int, stats: dict[str, float]) -> None:
            bar.update(task, completed=epoch + 1, waf=f"{stats['val_waf']:.3f}")

        return train_fold(make, data, y, fold.train, fold.val, n_classes, cfg, seed=cfg.seed + fold.index,
                          on_epoch=tick, select_rows=fold.inner)


def _write_oof(path: Path, data: FusionData, y: np.ndarray, oof: np.ndarray, classes: list[str],
               have: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "label", "discrete", *classes])
        for i in np.flatnonzero(have):
            w.writerow([data.names[i], classes[y[i]], classes[int(oof[i].argmax())], *[f"{p:.6f}" for p in oof[i]]])


def _plots(out: Path, overall: dict[str, Any], histories: list[dict[str, list[float]]], classes: list[str],
           model: str) -> None:
    from .plots import plot_confusion, plot_learning_curves

    plot_confusion(overall["confusion"], classes, out / "confusion.png",
                   title=f"{model}: out-of-fold WAF {overall['waf']:.3f}, accuracy {overall['accuracy']:.3f}")
    plot_learning_curves(histories, out / "learning_curves.png", title=f"{model}: learning curves per fold")
