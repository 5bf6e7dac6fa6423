"""The training loop every ``mer finetune`` command shares, and the run that ends in a saved directory.

A :class:`Task` wraps one model family: it decodes a clip (``load``), maps a batch of decoded items
to class logits (``forward``), names its trainable parameter groups and saves itself as a directory
its extractor loads. :func:`fit` trains it with AdamW, linear warm-up then linear decay, gradient
accumulation, gradient clipping and mixed precision on CUDA (bf16 autocast, or fp16 with a grad
scaler); it validates after every epoch (and once before training) and keeps the last epoch's
weights, so validation clips only measure and never choose anything. :func:`run_finetune` selects
the clips, fits, saves and writes the ``mer_finetune.json`` record.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .data import Selection, SplitConfig, batches, decoded_batches, select_clips
from .record import clip_set, write_record

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task; recorded in ``mer_finetune.json``."""

    epochs: int = 3  # passes over the training clips
    batch_size: int = 8  # clips per forward pass
    accum: int = 1  # forward passes per optimiser step (effective batch = batch_size * accum)
    lr: float = 1e-5  # learning rate of the backbone parameters (and of LoRA adapters)
    head_lr: float = 1e-3  # learning rate of the classification head
    weight_decay: float = 0.01  # AdamW weight decay (not applied to biases and norms)
    warmup: float = 0.1  # share of the optimiser steps with a linear warm-up (then linear decay to 0)
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # mixed precision: "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16" or "off"
    seed: int = 0  # seeds the head init, dropout and the batch order
    threads: int = 2  # decode threads
    eval_batch_size: int | None = None  # clips per validation forward (None: batch_size)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch (epoch 0 = validation before training): train_loss, val_loss,
            val_accuracy, val_waf, steps, seconds.
        step_losses: training loss of every forward pass, in order.
        skipped: clips that could not be decoded, with the reason (they were not trained on).
        trained: clips that took part in at least one training step.
        steps: optimiser steps taken.
        seconds: wall time of the training.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


class Task(Protocol):
    """A fine-tunable model family (see the module docstring)."""

    kind: str  # "video", "text" or "audio"

    def load(self, name: str) -> Any:
        """Decode clip ``name`` (raise :class:`mer.pipeline.decode_errors.DecodeError` when it cannot)."""

    def forward(self, items: list[Any]):  # -> torch.Tensor [B, C]
        """Class logits of a batch of decoded items."""

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """AdamW parameter groups (backbone at ``cfg.lr``, head at ``cfg.head_lr``)."""

    def modules(self) -> list[Any]:
        """Every torch module of the task (switched between train and eval mode)."""

    def save(self, out: Path) -> dict[str, Any]:
        """Write the fine-tuned model into ``out``; return what the record should say about it."""

    def describe(self) -> dict[str, Any]:
        """Base model, model options and decode settings, for the record."""

    # Optional: ``length(name) -> int`` (e.g. tokens of a subtitle). When a task has it, batches
    # group clips of similar length (see :func:`mer.finetune.data.batches`).


def _autocast(cfg: TrainConfig):
    """The autocast context of ``cfg`` (a null context on CPU or with amp off)."""
    import torch

    dev = torch.device(cfg.device)
    mode = cfg.amp
    if mode == "auto":
        mode = "bf16" if dev.type == "cuda" else "off"
    if mode == "off":
        return contextlib.nullcontext(), None
    if dev.type != "cuda":
        raise ValueError(f"--amp {cfg.amp} needs a CUDA device, got {cfg.device!r}")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if mode == "fp16" else None
    return torch.autocast("cuda", dtype=dtype), scaler


def evaluate(task: Task, names: list[str], sel: Selection, cfg: TrainConfig) -> dict[str, float]:
    """Loss, accuracy and weighted F1 (WAF) of the task on ``names`` (eval mode, no gradients)."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    if not names:
        return {}
    for m in task.modules():
        m.eval()
    ctx, _ = _autocast(cfg)
    losses, preds, trues = [], [], []
    bs = cfg.eval_batch_size or cfg.batch_size
    with torch.no_grad():
        plan = batches(names, bs, shuffle=False, seed=0, length=getattr(task, "length", None))
        for got, items, _failed in decoded_batches(task.load, plan, threads=cfg.threads):
            if not items:
                continue
            y = torch.as_tensor(sel.targets(got), device=cfg.device)
            with ctx:
                logits = task.forward(items)
            logits = logits.float()
            losses.append(float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")))
            preds.extend(logits.argmax(1).tolist())
            trues.extend(y.tolist())
    if not trues:
        return {}
    return {"val_loss": sum(losses) / len(trues), "val_accuracy": float(accuracy_score(trues, preds)),
            "val_waf": float(f1_score(trues, preds, average="weighted", labels=list(range(len(sel.classes))),
                                      zero_division=0))}


def fit(task: Task, sel: Selection, cfg: TrainConfig, *, progress: bool = True) -> FitResult:
    """Train ``task`` on ``sel.train``, validating on ``sel.val`` before training and after every epoch."""
    import torch

    torch.manual_seed(cfg.seed)
    groups = task.param_groups(cfg)
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise ValueError("nothing to train: every parameter is frozen")
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(math.ceil(len(sel.train) / cfg.batch_size) / max(1, cfg.accum))
    total = max(1, per_epoch * cfg.epochs)
    warm = int(round(cfg.warmup * total))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    ctx, scaler = _autocast(cfg)
    result = FitResult()
    trained: set[str] = set()
    first = evaluate(task, sel.val, sel, cfg)
    result.history.append({"epoch": 0, **first})
    if first:
        log.info("before training: val loss %.4f, accuracy %.3f, WAF %.3f", first["val_loss"],
                 first["val_accuracy"], first["val_waf"])
    t0 = time.perf_counter()
    bar, task_id = _progress(progress, cfg.epochs * math.ceil(len(sel.train) / cfg.batch_size))
    try:
        for epoch in range(1, cfg.epochs + 1):
            for m in task.modules():
                m.train()
            te = time.perf_counter()
            epoch_losses: list[float] = []
            plan = batches(sel.train, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch,
                           length=getattr(task, "length", None))
            opt.zero_grad(set_to_none=True)
            pending = 0
            for got, items, failed in decoded_batches(task.load, plan, threads=cfg.threads):
                for name, reason in failed.items():
                    if name not in result.skipped:
                        log.warning("clip %s skipped: %s", name, reason)
                    result.skipped[name] = reason
                if items:
                    y = torch.as_tensor(sel.targets(got), device=cfg.device)
                    with ctx:
                        logits = task.forward(items)
                    loss = torch.nn.functional.cross_entropy(logits.float(), y)
                    scaled = loss / max(1, cfg.accum)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    pending += 1
                    epoch_losses.append(float(loss.detach()))
                    result.step_losses.append(epoch_losses[-1])
                    trained.update(got)
                    if pending == cfg.accum:
                        _step(opt, sched, scaler, params, cfg)
                        pending = 0
                        result.steps += 1
                if bar is not None:
                    bar.update(task_id, advance=1, loss=f"{np.mean(epoch_losses[-20:]):.3f}" if epoch_losses else "-")
                elif epoch_losses and len(epoch_losses) % 50 == 0:
                    log.info("epoch %d: %d/%d batches, loss %.4f, %.2f s/batch", epoch, len(epoch_losses), len(plan),
                             np.mean(epoch_losses[-50:]), (time.perf_counter() - te) / len(epoch_losses))
            if pending:
                _step(opt, sched, scaler, params, cfg)
                result.steps += 1
            stats = evaluate(task, sel.val, sel, cfg)
            row = {"epoch": epoch, "train_loss": float(np.mean(epoch_losses)) if epoch_losses else None,
                   **stats, "steps": result.steps, "seconds": round(time.perf_counter() - te, 2)}
            result.history.append(row)
            log.info("epoch %d: train loss %s%s", epoch, f"{row['train_loss']:.4f}" if row["train_loss"] else "-",
                     f", val loss {stats['val_loss']:.4f}, accuracy {stats['val_accuracy']:.3f}, "
                     f"WAF {stats['val_waf']:.3f}" if stats else "")
    finally:
        if bar is not None:
            bar.stop()
    for m in task.modules():
        m.eval()
    result.trained = [n for n in sel.train if n in trained]
    result.seconds = time.perf_counter() - t0
    return result


def _step(opt, sched, scaler, params, cfg: TrainConfig) -> None:
    import torch

    if scaler is not None:
        scaler.unscale_(opt)
    if cfg.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]fine-tune"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
    bar.start()
    return bar, bar.add_task("fine-tune", total=total, loss="-")


def param_groups(backbone: list[Any], head: list[Any], cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: backbone matrices with weight decay, backbone biases/norms without, head at ``head_lr``."""
    decay = [p for p in backbone if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in backbone if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "lr": cfg.lr}, {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0},
              {"params": [p for p in head if p.requires_grad], "lr": cfg.head_lr}]
    return [g for g in groups if g["params"]]


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty folder is an error unless ``overwrite`` (then it is emptied)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty (use --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_finetune(task: Task, table_path: Path, labels: Path, out: Path, split: SplitConfig, train: TrainConfig,
                 *, selection: Selection | None = None, skipped: dict[str, str] | None = None,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fit ``task`` on the selected clips, save it into ``out`` and write ``mer_finetune.json``; return the record."""
    from mer.store.tables import read_clip_table

    sel = selection or select_clips(read_clip_table(table_path), labels, split)
    prepare_out(out, overwrite)
    res = fit(task, sel, train, progress=progress)
    saved = task.save(out)
    skipped_all = {**(skipped or {}), **res.skipped}
    record = {
        "task": task.kind,
        **task.describe(),
        "classes": sel.classes,
        "clips": str(table_path),
        "labels": str(labels),
        "split": asdict(split),
        "train": asdict(train),
        "trained_on": clip_set(res.trained),
        "validated_on": clip_set(sel.val),
        "held_out": clip_set(sel.excluded),
        "skipped": skipped_all,
        "history": res.history,
        "steps": res.steps,
        "train_seconds": round(res.seconds, 2),
        **saved,
    }
    record["base_weights_hash"] = _base_hash(record)
    write_record(out, record)
    last = res.history[-1] if res.history else {}
    log.info("saved fine-tuned %s model to %s (%d clips, %d steps, last val WAF %s)", task.kind, out,
             len(res.trained), res.steps, f"{last['val_waf']:.3f}" if "val_waf" in last else "-")
    return record


def _base_hash(record: dict[str, Any]) -> str | None:
    """Content hash of the base model when it is a local folder or weights file (``None`` for hub ids)."""
    from mer.store.provenance import hash_path

    opts = record.get("model_options") or {}
    for cand in (opts.get("pretrained"), record.get("base_dir"), record.get("base_model")):
        if cand and Path(str(cand)).exists():
            return hash_path(str(cand))
    return None
