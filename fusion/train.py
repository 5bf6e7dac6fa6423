"""Training one fold: AdamW, cosine or plateau schedule, early stopping, honest epoch selection.

Which clips pick the epoch is ``TrainConfig.select``:

- ``"inner"`` (default): part of the fold's *training* clips (:func:`~mer.fusion.folds.inner_split`,
  grouped like the outer folds) is held out; the epoch with the best WAF there is kept (or, with
  ``refit``, the model is retrained on all training clips for that many epochs). The fold's
  validation clips never influence training: their probabilities are computed once, with the
  selected model, and only reported.
- ``"outer"``: the old behaviour, optimistic: the validation fold that is then reported picks the
  epoch (and drives a plateau schedule).
- ``"last"``: no early stopping; the model after ``epochs`` epochs.

Validation curves are still recorded every epoch (for the learning-curve plots); they only decide
anything with ``"outer"``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from .config import TrainConfig
from .data import FusionData, Standardizer, make_batch
from .folds import inner_split
from .normalize import fit_normalizer

log = logging.getLogger(__name__)

SELECT_MODES = ("inner", "outer", "last")


@dataclass
class FoldResult:
    """A trained fold: selected weights, its validation probabilities, and the learning curves.

    Attributes:
        state_dict: weights of the selected model.
        norm: the feature normaliser fitted on the rows the model was trained on.
        val_probs: ``[len(val_rows), C]`` the selected model on the validation fold (reported only,
            unless ``selection == "outer"``).
        best_epoch: the selected epoch (0-based); with ``refit`` the model was retrained for
            ``best_epoch + 1`` epochs.
        history: per epoch ``train_loss``, ``val_loss``, ``val_waf``, ``val_acc`` (the validation
            fold), and with ``"inner"`` also ``select_loss``, ``select_waf``, ``select_acc``.
        selection: which split picked ``best_epoch``: ``"inner"``, ``"outer"`` or ``"last"``.
        select_rows: ``"inner"``: the held-out training rows the epoch was picked on.
        select_probs: ``"inner"``: the picked model's probabilities on ``select_rows`` (held-out
            predictions of the fold's own training side; with ``refit`` of the model before it was
            retrained).
        select_waf: ``"inner"``: WAF on ``select_rows`` at ``best_epoch``.
        refit: whether the model was retrained on all training rows after the selection.
    """

    state_dict: dict[str, torch.Tensor]
    norm: Standardizer
    val_probs: np.ndarray
    best_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)
    selection: str = "outer"
    select_rows: np.ndarray | None = None
    select_probs: np.ndarray | None = None
    select_waf: float | None = None
    refit: bool = False


def seed_everything(seed: int, device: str = "cpu") -> None:
    """Seed torch and numpy; on CUDA also ask for deterministic kernels.

    CPU kernels are already deterministic for a given thread count, and
    ``torch.use_deterministic_algorithms`` imports torch's compiler stack on its first call (~4 s
    per process on a 2-core machine), so it is only switched on where it changes results.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    if str(device).startswith("cuda"):
        torch.use_deterministic_algorithms(True, warn_only=True)


def predict_probs(model: nn.Module, data: FusionData, rows: np.ndarray, norm: Standardizer,
                  device: str = "cpu", batch_size: int = 1024) -> np.ndarray:
    """Softmax probabilities ``[len(rows), C]`` in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            inputs, present = make_batch(data, rows[lo:lo + batch_size], norm, device)
            out.append(torch.softmax(model(inputs, present).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _evaluate(model: nn.Module, data: FusionData, y: np.ndarray, rows: np.ndarray, norm: Standardizer,
              n_classes: int, device: str) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities on ``rows`` and their loss, WAF and accuracy."""
    probs = predict_probs(model, data, rows, norm, device)
    pred = probs.argmax(1)
    waf = float(f1_score(y[rows], pred, average="weighted", labels=list(range(n_classes)), zero_division=0))
    loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-9)),
                                        torch.from_numpy(y[rows]).long()))
    return probs, {"loss": loss, "waf": waf, "acc": float((pred == y[rows]).mean())}


def split_select_rows(y: np.ndarray, train_rows: np.ndarray, cfg: TrainConfig, seed: int,
                      groups: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``train_rows`` held out to pick the epoch (:func:`~mer.fusion.folds.inner_split`).

    Args:
        y: class index of every row.
        train_rows: the fold's training rows with real labels.
        cfg: ``inner_frac``.
        seed: split seed (the fold's training seed).
        groups: group of every row (grouped folds), or ``None``.
    """
    train_rows = np.asarray(train_rows, np.int64)
    fold_groups = None if groups is None else np.asarray(groups)[train_rows]
    _, held = inner_split(y[train_rows], cfg.inner_frac, groups=fold_groups, seed=seed)
    return train_rows[held]


def train_fold(make_model: Callable[[], nn.Module], data: FusionData, y: np.ndarray, train_rows: np.ndarray,
               val_rows: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None, *,
               select_rows: np.ndarray | None = None, groups: np.ndarray | None = None) -> FoldResult:
    """Train one fold, pick the epoch as ``cfg.select`` says, return the picked model.

    Args:
        make_model: builds a fresh model.
        data: features of every row.
        y: class index of every row (rows outside ``train_rows``/``select_rows`` are never read,
            except ``val_rows`` for the reported curves and, with ``select="outer"``, the selection).
        train_rows: the fold's training rows (real and pseudo-labelled).
        val_rows: the fold's validation rows: predicted once with the picked model and reported.
        n_classes: C.
        cfg: training config (``select``, ``inner_frac``, ``refit``, ``patience``...).
        seed: seed of initialisation, batch order and (when made here) the inner split.
        on_epoch: called after each epoch with the epoch and its statistics.
        select_rows: ``select="inner"``: the rows of ``train_rows`` to pick the epoch on; ``None``
            makes them with :func:`split_select_rows` over all of ``train_rows``.
        groups: group of every row, for the inner split made here (``None``: stratified).

    Raises:
        ValueError: an unknown ``select`` or schedule, ``select="last"`` with the plateau schedule
            (which needs a held-out signal), or ``select_rows`` that are not training rows.
    """
    if cfg.select not in SELECT_MODES:
        raise ValueError(f"select must be one of {', '.join(SELECT_MODES)}, got {cfg.select!r}")
    if cfg.schedule not in ("cosine", "plateau"):
        raise ValueError(f"schedule must be 'cosine' or 'plateau', got {cfg.schedule!r}")
    if cfg.select == "last" and cfg.schedule == "plateau":
        raise ValueError("select='last' has no held-out signal for the plateau schedule; use schedule='cosine' "
                         "or select='inner'")
    train_rows = np.asarray(train_rows, np.int64)
    val_rows = np.asarray(val_rows, np.int64)
    if cfg.select != "inner":
        return _fit(make_model, data, y, train_rows, val_rows, None, n_classes, cfg, seed, on_epoch)
    if select_rows is None:
        select_rows = split_select_rows(y, train_rows, cfg, seed, groups)
    select_rows = np.asarray(select_rows, np.int64)
    held = np.isin(train_rows, select_rows)
    if held.sum() != len(select_rows) or len(select_rows) == 0 or held.all():
        raise ValueError("select_rows must be a non-empty proper subset of train_rows")
    fit_rows = train_rows[~held]  # the training order of the remaining rows is kept
    res = _fit(make_model, data, y, fit_rows, val_rows, select_rows, n_classes, cfg, seed, on_epoch)
    if not cfg.refit:
        return res
    # retrain on every training row for the picked number of epochs: same seed, same schedule (a plateau
    # schedule replays the inner WAF it saw), no selection, the validation fold predicted once at the end
    refit = _fit(make_model, data, y, train_rows, val_rows, None, n_classes, cfg, seed, None,
                 epochs=res.best_epoch + 1, plateau_signal=res.history["select_waf"])
    history = {**res.history, "refit_train_loss": refit.history["train_loss"]}
    return FoldResult(state_dict=refit.state_dict, norm=refit.norm, val_probs=refit.val_probs,
                      best_epoch=res.best_epoch, history=history, selection="inner", select_rows=res.select_rows,
                      select_probs=res.select_probs, select_waf=res.select_waf, refit=True)


def train_final(make_model: Callable[[], nn.Module], data: FusionData, y: np.ndarray, rows: np.ndarray,
                n_classes: int, cfg: TrainConfig, epochs: int, seed: int,
                plateau_signal: list[float] | None = None) -> FoldResult:
    """One model on ``rows`` (every labelled clip) for exactly ``epochs`` epochs, nothing held out.

    The schedule is the folds' (cosine over ``cfg.epochs``; plateau stepping on ``plateau_signal``),
    so the model sees the same learning-rate path the folds' picked models saw.
    """
    if epochs < 1:
        raise ValueError(f"the final model needs at least one epoch, got {epochs}")
    rows = np.asarray(rows, np.int64)
    return _fit(make_model, data, y, rows, np.zeros(0, np.int64), None, n_classes, cfg, seed, None,
                epochs=int(epochs), plateau_signal=plateau_signal)


def _fit(make_model: Callable[[], nn.Module], data: FusionData, y: np.ndarray, fit_rows: np.ndarray,
         val_rows: np.ndarray, select_rows: np.ndarray | None, n_classes: int, cfg: TrainConfig, seed: int,
         on_epoch: Callable[[int, dict[str, float]], None] | None, *, epochs: int | None = None,
         plateau_signal: list[float] | None = None) -> FoldResult:
    """The training loop on ``fit_rows``.

    The epoch is picked on ``select_rows`` when given (``"inner"``), else on ``val_rows`` with
    ``cfg.select == "outer"``, else it is the last one. ``epochs`` (a refit) trains exactly that many
    epochs without evaluating, the plateau schedule then stepping on ``plateau_signal``.
    """
    refit = epochs is not None
    mode = "inner" if select_rows is not None else ("last" if refit else cfg.select)
    seed_everything(seed, cfg.device)
    norm = fit_normalizer(data, fit_rows, cfg)  # none | global | per group (fusion/normalize.py)
    model = make_model().to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched: object = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=4)
    weights = None
    if cfg.class_weights:
        counts = np.bincount(y[fit_rows], minlength=n_classes).astype(np.float32)
        weights = torch.tensor(len(fit_rows) / (n_classes * np.maximum(counts, 1)), device=cfg.device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    gen = np.random.default_rng(seed)
    y_t = torch.from_numpy(y).long()
    best: tuple[float, int, dict[str, torch.Tensor] | None] = (-1.0, -1, None)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_waf": [], "val_acc": []}
    if select_rows is not None:
        history.update({"select_loss": [], "select_waf": [], "select_acc": []})
    stale = 0
    for epoch in range(cfg.epochs if epochs is None else epochs):
        model.train()
        order = gen.permutation(fit_rows)
        total = 0.0
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo:lo + cfg.batch_size]
            if len(rows) < 2 and len(order) > 1:
                continue  # a single-clip batch breaks nothing but adds noise
            inputs, present = make_batch(data, rows, norm, cfg.device)
            loss = loss_fn(model(inputs, present), y_t[rows].to(cfg.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(rows)
        if refit:
            history["train_loss"].append(total / max(1, len(order)))
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(plateau_signal[epoch] if plateau_signal else 0.0)
            else:
                sched.step()
            continue
        # the validation fold: recorded for the curves; it decides only with select="outer"
        _, val = _evaluate(model, data, y, val_rows, norm, n_classes, cfg.device)
        stats = {"train_loss": total / max(1, len(order)), "val_loss": val["loss"], "val_waf": val["waf"],
                 "val_acc": val["acc"]}
        signal = val["waf"]
        if select_rows is not None:
            _, sel = _evaluate(model, data, y, select_rows, norm, n_classes, cfg.device)
            stats.update({"select_loss": sel["loss"], "select_waf": sel["waf"], "select_acc": sel["acc"]})
            signal = sel["waf"]
        for k, v in stats.items():
            history[k].append(v)
        if on_epoch:
            on_epoch(epoch, stats)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(signal)
        else:
            sched.step()
        if mode == "last":
            continue
        if signal > best[0] + 1e-6:
            best = (signal, epoch, copy.deepcopy(model.state_dict()))
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if mode == "last":
        best = (float("nan"), len(history["train_loss"]) - 1, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    select_probs, select_waf = None, None
    if select_rows is not None:
        select_probs = predict_probs(model, data, select_rows, norm, cfg.device)
        select_waf = float(best[0])
    return FoldResult(state_dict=best[2], norm=norm, val_probs=predict_probs(model, data, val_rows, norm, cfg.device),
                      best_epoch=best[1], history=history, selection=mode, select_rows=select_rows,
                      select_probs=select_probs, select_waf=select_waf)
