"""Feature normalisation of a run: none, global (training fold) or per group (speaker, source...).

``global`` z-scores every feature of a set with the training fold's mean and std
(:class:`~mer.fusion.data.Standardizer`). ``group`` z-scores each clip with the statistics of its
group — the clips that share its value in a clip-table column (``speaker``, video source...):

``x̃ = (x − μ_g) / σ_g``, with ``μ_g``, ``σ_g`` the per-feature mean and std over the clips of
group ``g`` present in the set (over their frames for a frame-level set).

The statistics come from every clip of the group in the data being normalised — training and
validation clips alike, and at prediction time the clips being predicted — and never from labels.
This is the usual per-speaker normalisation of speech emotion recognition: it is transductive (a
new speaker's statistics come from its own unlabelled clips), and it assumes each group's clips
cover the classes roughly alike. A group with fewer than ``min_group`` clips in a set (and a clip
without a group value) falls back to the global statistics of the training fold, which the
checkpoint stores together with the mode, the column and ``min_group``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import FusionData, Standardizer

log = logging.getLogger(__name__)

MODES = ("none", "global", "group")


@dataclass(frozen=True)
class NormSpec:
    """How a run normalises its features (resolved from a training config)."""

    mode: str  # none | global | group
    col: str | None = None  # clip-table column of the groups (group mode)
    min_group: int = 8  # smaller groups use the training fold's global statistics


def norm_spec(train: Any) -> NormSpec:
    """The normalisation of a training config (a ``TrainConfig`` or its dict from ``config.json``).

    Old run configs have only ``standardize``: ``True`` is ``global``, ``False`` is ``none``.
    Raises ``ValueError`` for an unknown mode, group mode without a column, a column without group
    mode, or ``normalize`` contradicting ``standardize=False``.
    """
    get = train.get if isinstance(train, dict) else lambda k, d=None: getattr(train, k, d)
    mode = str(get("normalize", "global") or "global")
    col = get("norm_col", None)
    min_group = int(get("min_group", 8))
    if mode not in MODES:
        raise ValueError(f"normalize must be one of {', '.join(MODES)}, got {mode!r}")
    if not get("standardize", True):
        if mode == "group":
            raise ValueError("standardize=false contradicts normalize=group; use normalize=none|global|group alone")
        mode = "none"
    if mode == "group" and not col:
        raise ValueError("normalize=group needs the clip-table column of the groups (--norm-col speaker)")
    if col and mode != "group":
        raise ValueError(f"--norm-col {col} goes with --normalize group (got normalize={mode})")
    if min_group < 1:
        raise ValueError(f"min_group must be at least 1, got {min_group}")
    return NormSpec(mode, str(col) if col else None, min_group)


def group_values(col: dict[str, str], names: list[str], table: str, column: str) -> np.ndarray:
    """Each clip's group (``""``: none) from a clip-table column, refusing clips the table lacks."""
    lacking = [n for n in names if n not in col]
    if lacking:
        raise ValueError(f"{len(lacking)} clips are not in the clip table {table} that holds the normalisation "
                         f"column {column!r} (first: {', '.join(lacking[:10])})")
    return np.array([col[n].strip() for n in names], dtype=object)


@dataclass
class GroupNormalizer:
    """Per-group z-scoring bound to one :class:`FusionData` (its ``groups``).

    Attributes:
        fallback: global statistics of the training fold, for small or unnamed groups.
        col: the clip-table column the groups come from.
        min_group: clips a group needs in a set for its own statistics.
        mean_table, std_table: key -> ``[G + 1, D]`` per-group means and stds (row ``G``: the fallback).
        slot: key -> ``[N]`` row of the tables for each clip of the data.
    """

    fallback: Standardizer
    col: str
    min_group: int
    mean_table: dict[str, np.ndarray]
    std_table: dict[str, np.ndarray]
    slot: dict[str, np.ndarray]

    @classmethod
    def bind(cls, data: FusionData, fallback: Standardizer, col: str, min_group: int) -> GroupNormalizer:
        """Group statistics of every group in ``data`` (all its clips; labels are never read)."""
        if data.groups is None:
            raise ValueError(f"group normalisation by {col!r} needs each clip's group (a clip table with that column)")
        groups = np.asarray(data.groups, dtype=object)
        if len(groups) != len(data):
            raise ValueError(f"{len(groups)} group values for {len(data)} clips")
        values, inverse = np.unique(groups.astype(str), return_inverse=True)
        members = np.argsort(inverse, kind="stable")  # rows of each group, group after group
        bounds = np.searchsorted(inverse[members], np.arange(len(values) + 1))
        means, stds, slots = {}, {}, {}
        for k in data.keys:
            fb = len(values)
            mt = np.tile(fallback.mean[k], (fb + 1, 1)).astype(np.float32)
            st = np.tile(fallback.std[k], (fb + 1, 1)).astype(np.float32)
            slot = np.full(len(data), fb, dtype=np.int64)
            small = []
            for gi, g in enumerate(values):
                if not g:
                    continue  # clips without a group value: global statistics
                rows = members[bounds[gi]:bounds[gi + 1]]
                rows = rows[data.present[k][rows]]
                if len(rows) < min_group:
                    if len(rows):
                        small.append(f"{g} ({len(rows)})")
                    continue
                mean, std = _stats(data, k, rows)
                mt[gi], st[gi] = mean, std
                slot[rows] = gi
            if small:
                log.info("%s: %d group(s) under min_group=%d use the global statistics: %s", k, len(small),
                         min_group, ", ".join(small[:10]))
            means[k], stds[k], slots[k] = mt, st, slot
        return cls(fallback, col, min_group, means, stds, slots)

    def stats(self, key: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[len(rows), D]`` mean and std to z-score ``rows`` of set ``key`` with."""
        s = self.slot[key][rows]
        return self.mean_table[key][s], self.std_table[key][s]

    def own_statistics(self, key: str) -> np.ndarray:
        """``[N]`` True for the clips normalised with their group's own statistics."""
        return self.slot[key] < len(self.mean_table[key]) - 1

    def state(self) -> dict[str, Any]:
        """Checkpoint form: the fallback statistics plus mode, column and ``min_group`` (group
        statistics are recomputed from the clips being normalised)."""
        return {**self.fallback.state(), "mode": "group", "norm_col": self.col, "min_group": self.min_group}


def _stats(data: FusionData, key: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored like :class:`Standardizer`) of ``rows`` of a set; over frames for frame sets."""
    if data.utt[key]:
        x = np.asarray(data.feats[key][rows], dtype=np.float64)
    else:
        x = np.concatenate([data.feats[key][i] for i in rows]).astype(np.float64)
    s = x.std(0)
    return x.mean(0).astype(np.float32), np.where(s > 1e-6, s, 1.0).astype(np.float32)


Normalizer = Standardizer | GroupNormalizer


def fit_normalizer(data: FusionData, train_rows: np.ndarray, train: Any) -> Normalizer:
    """The normaliser of one fold: global statistics from ``train_rows``; in group mode each group's
    own statistics on top (from all of ``data``'s clips of the group)."""
    spec = norm_spec(train)
    if spec.mode == "none":
        return Standardizer.fit(data, train_rows, enabled=False)
    base = Standardizer.fit(data, train_rows, enabled=True)
    if spec.mode == "global":
        return base
    return GroupNormalizer.bind(data, base, spec.col, spec.min_group)


def load_normalizer(state: dict[str, Any], data: FusionData) -> Normalizer:
    """A checkpoint's normaliser for ``data`` (group mode: the groups' statistics from ``data``)."""
    base = Standardizer.from_state(state)
    if state.get("mode") != "group":
        return base
    return GroupNormalizer.bind(data, base, str(state["norm_col"]), int(state["min_group"]))
