"""Which clips a fine-tuning run trains and validates on, and their decoded inputs.

The selection is the labelled clips of the clip table, minus every clip that must not be seen:
``--exclude`` lists and the validation fold of a fusion run (``--folds-from RUN --fold K``), so a
fine-tuned extractor never learns the clips that fusion's k-fold later validates on. What is left
is split into train and validation (stratified fraction, an explicit list, or fold K of a
stratified k-fold over the remaining clips). Decoding goes through the same
:func:`mer.pipeline.inputs.load_item` as extraction, so the model sees exactly what the extractor sees.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mer.store.tables import ClipTable, TableError, read_labels, read_names

log = logging.getLogger(__name__)


@dataclass
class SplitConfig:
    """How the labelled clips are chosen and split; recorded in ``mer_finetune.json``."""

    exclude: list[str] = field(default_factory=list)  # files listing clips never to train or validate on
    folds_from: str | None = None  # a ``mer fuse train`` run directory: its fold ``fold`` validation clips are excluded
    fold: int | None = None  # the fold of ``folds_from`` (or of ``kfold``) whose validation clips are held out
    val_fraction: float = 0.1  # stratified share of the remaining clips kept for validation (0: none)
    val: str | None = None  # file listing the validation clips (wins over val_fraction)
    kfold: int | None = None  # validate on fold ``fold`` of a stratified k-fold over the remaining clips
    classes: list[str] | None = None  # the label set, in head order (None: sorted labels of the selected clips)
    limit: int | None = None  # use only the first N training clips (quick runs)
    seed: int = 0  # seed of the validation split


@dataclass
class Selection:
    """The outcome of :func:`select_clips`.

    Attributes:
        train: clips trained on (in table order).
        val: clips validated on.
        excluded: labelled clips of the table held out by ``exclude`` / ``folds_from``.
        classes: label set in head order.
        labels: clip -> class for train and val clips.
    """

    train: list[str]
    val: list[str]
    excluded: list[str]
    classes: list[str]
    labels: dict[str, str]

    def targets(self, names: list[str]) -> np.ndarray:
        """Class indices of ``names``."""
        return np.array([self.classes.index(self.labels[n]) for n in names], dtype=np.int64)


def fold_val_names(run_dir: str | os.PathLike[str], fold: int) -> list[str]:
    """The validation clips of fold ``fold`` of a ``mer fuse train`` run directory.

    Read from ``fold<k>.pt`` (its ``val_names``); a run without checkpoints is an error, because
    recomputing the folds would need the exact feature set the run was trained on.
    """
    run = Path(run_dir)
    if not (run / "config.json").is_file():
        raise TableError(f"{run}: not a fusion run directory (no config.json)")
    cfg = json.loads((run / "config.json").read_text())
    n_folds = int(cfg.get("folds", 0))
    if not 0 <= fold < max(n_folds, 1):
        raise TableError(f"{run}: has {n_folds} folds; --fold must be in 0..{n_folds - 1}, got {fold}")
    ckpt = run / f"fold{fold}.pt"
    if not ckpt.is_file():
        raise TableError(f"{ckpt}: missing; cannot tell which clips fold {fold} validated on")
    import torch

    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    names = data.get("val_names")
    if not names:
        raise TableError(f"{ckpt}: has no val_names")
    return [str(n) for n in names]


def select_clips(table: ClipTable, labels_csv: str | os.PathLike[str], cfg: SplitConfig) -> Selection:
    """Labelled clips of ``table`` minus the held-out ones, split into train and validation.

    Raises:
        TableError: unreadable lists, a label outside ``cfg.classes``, or nothing left to train on.
    """
    labels = read_labels(labels_csv, cfg.classes)
    in_table = set(table.names)
    names = [n for n in table.names if n in labels]
    if not names:
        raise TableError(f"no clip of {table.path} has a label in {labels_csv}")
    held: set[str] = set()
    for path in cfg.exclude:
        held |= set(read_names(Path(path)))
    if cfg.folds_from is not None:
        if cfg.fold is None:
            raise TableError("--folds-from needs --fold K (the fold whose validation clips are held out)")
        fold_names = fold_val_names(cfg.folds_from, cfg.fold)
        held |= set(fold_names)
        log.info("holding out the %d validation clips of fold %d of %s", len(fold_names), cfg.fold, cfg.folds_from)
    excluded = [n for n in names if n in held]
    pool = [n for n in names if n not in held]
    classes = list(cfg.classes) if cfg.classes else sorted({labels[n] for n in pool})
    y = np.array([classes.index(labels[n]) for n in pool], dtype=np.int64)
    if cfg.val is not None:
        wanted = set(read_names(Path(cfg.val)))
        unknown = sorted(wanted - in_table)
        if unknown:
            raise TableError(f"{len(unknown)} validation clips are not in {table.path}: {', '.join(unknown[:10])}")
        leaked = sorted(wanted & held)
        if leaked:
            raise TableError(f"{len(leaked)} validation clips are also held out: {', '.join(leaked[:10])}")
        val = [n for n in pool if n in wanted]
    elif cfg.kfold is not None and cfg.folds_from is None:
        from sklearn.model_selection import StratifiedKFold

        k = int(cfg.fold or 0)
        if not 0 <= k < cfg.kfold:
            raise TableError(f"--fold must be in 0..{cfg.kfold - 1}, got {k}")
        splits = list(StratifiedKFold(cfg.kfold, shuffle=True, random_state=cfg.seed).split(np.zeros(len(y)), y))
        val_idx = set(splits[k][1].tolist())
        val = [n for i, n in enumerate(pool) if i in val_idx]
    elif cfg.val_fraction > 0:
        val = _stratified_sample(pool, y, cfg.val_fraction, cfg.seed)
    else:
        val = []
    val_set = set(val)
    train = [n for n in pool if n not in val_set]
    if cfg.limit is not None:
        train = train[: int(cfg.limit)]
    if not train:
        raise TableError("no clips left to train on after holding out and splitting")
    kept = {n: labels[n] for n in train + val}
    log.info("fine-tune selection: %d train, %d validation, %d held out, %d classes", len(train), len(val),
             len(excluded), len(classes))
    return Selection(train=train, val=val, excluded=excluded, classes=classes, labels=kept)


def _stratified_sample(names: list[str], y: np.ndarray, fraction: float, seed: int) -> list[str]:
    """About ``fraction`` of the clips of every class (at least one of a class with 2+ clips)."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            continue
        k = max(1, int(round(fraction * len(idx))))
        chosen |= set(rng.choice(idx, size=min(k, len(idx) - 1), replace=False).tolist())
    return [n for i, n in enumerate(names) if i in chosen]


def batches(names: list[str], batch_size: int, *, shuffle: bool, seed: int,
            length: Callable[[str], int] | None = None, pool: int = 50) -> list[list[str]]:
    """``names`` cut into batches, shuffled with ``seed`` when asked.

    With ``length`` (e.g. tokens of a subtitle), clips of similar length share a batch, so little
    compute goes to padding: the shuffled clips are sorted by length within pools of
    ``pool * batch_size`` and the resulting batches are shuffled again.
    """
    rng = np.random.default_rng(seed)
    order = list(names)
    if shuffle:
        order = [order[i] for i in rng.permutation(len(order))]
    if length is None:
        return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    span = max(1, pool) * batch_size
    out: list[list[str]] = []
    for lo in range(0, len(order), span):
        chunk = sorted(order[lo: lo + span], key=length)
        out.extend(chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def decoded_batches(load: Any, groups: list[list[str]], *, threads: int = 2,
                    prefetch: int = 2) -> Iterator[tuple[list[str], list[Any], dict[str, str]]]:
    """Decode each group of clips with ``load(name)`` in a thread pool, ``prefetch`` groups ahead.

    Yields ``(names, items, failed)`` with the clips that decoded and ``{name: reason}`` for the others.
    """
    from mer.pipeline.decode_errors import DecodeError

    def one(name: str) -> tuple[str, Any, str | None]:
        try:
            return name, load(name), None
        except DecodeError as exc:
            return name, None, exc.problem

    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ft-decode") as pool:
        futures = [[pool.submit(one, n) for n in g] for g in groups[:prefetch]]
        for i in range(len(groups)):
            if i + prefetch < len(groups):
                futures.append([pool.submit(one, n) for n in groups[i + prefetch]])
            done = [f.result() for f in futures[i]]
            futures[i] = []
            ok = [(n, it) for n, it, err in done if err is None]
            yield [n for n, _ in ok], [it for _, it in ok], {n: err for n, _, err in done if err is not None}
