"""Training one fold: AdamW, cosine or plateau schedule, early stopping on validation WAF."""

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

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """A trained fold: best weights, its validation probabilities, and the learning curves."""

    state_dict: dict[str, torch.Tensor]
    norm: Standardizer
    val_probs: np.ndarray
    best_epoch: int
    history: dict[str, list[float]] = field(default_factory=dict)


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


def train_fold(make_model: Callable[[], nn.Module], data: FusionData, y: np.ndarray, train_rows: np.ndarray,
               val_rows: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int,
               on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FoldResult:
    """Train on ``train_rows``, select the epoch with the best validation WAF, return it."""
    seed_everything(seed, cfg.device)
    norm = Standardizer.fit(data, train_rows, cfg.standardize)
    model = make_model().to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched: object = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    elif cfg.schedule == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=4)
    else:
        raise ValueError(f"schedule must be 'cosine' or 'plateau', got {cfg.schedule!r}")
    weights = None
    if cfg.class_weights:
        counts = np.bincount(y[train_rows], minlength=n_classes).astype(np.float32)
        weights = torch.tensor(len(train_rows) / (n_classes * np.maximum(counts, 1)), device=cfg.device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    gen = np.random.default_rng(seed)
    y_t = torch.from_numpy(y).long()
    best = (-1.0, -1, None)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_waf": [], "val_acc": []}
    stale = 0
    for epoch in range(cfg.epochs):
        model.train()
        order = gen.permutation(train_rows)
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
        probs = predict_probs(model, data, val_rows, norm, cfg.device)
        pred = probs.argmax(1)
        waf = float(f1_score(y[val_rows], pred, average="weighted", labels=list(range(n_classes)), zero_division=0))
        val_loss = float(nn.functional.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-9)),
                                                torch.from_numpy(y[val_rows]).long()))
        stats = {"train_loss": total / max(1, len(order)), "val_loss": val_loss, "val_waf": waf,
                 "val_acc": float((pred == y[val_rows]).mean())}
        for k, v in stats.items():
            history[k].append(v)
        if on_epoch:
            on_epoch(epoch, stats)
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(waf)
        else:
            sched.step()
        if waf > best[0] + 1e-6:
            best = (waf, epoch, copy.deepcopy(model.state_dict()))
            stale = 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best[2])
    return FoldResult(state_dict=best[2], norm=norm, val_probs=predict_probs(model, data, val_rows, norm, cfg.device),
                      best_epoch=best[1], history=history)
