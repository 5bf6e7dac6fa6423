"""Stored features as training data: loading, standardisation, batching.

Fusion reads only the feature store (never media or extractors). Clips lacking a set are kept,
with ``present[key]`` False, so the models can mask that modality instead of dropping the clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mer.store import FeatureStore

from .models.common import SetBatch

log = logging.getLogger(__name__)


@dataclass
class FusionData:
    """Features of several sets aligned by clip.

    Attributes:
        names: clips, in order.
        keys: feature-set keys.
        utt: key -> True for utterance-level sets.
        dims: key -> feature dimension.
        feats: key -> ``[N, D]`` float32 (utterance) or a list of ``[T, D]`` arrays / ``None``.
        present: key -> ``[N]`` bool.
        groups: ``[N]`` each clip's normalisation group (``""``: none), or ``None`` when the run
            does not normalise per group (:mod:`mer.fusion.normalize`).
        times: frame-level key -> per clip ``[T]`` float32 seconds from clip start (NaN where the
            store does not know a frame's time, e.g. text tokens), aligned with ``feats``; ``None``
            where the clip lacks the set. Utterance-level keys are absent, and so is a key (or the
            whole dict) of data built without times, which the models read as "times unknown".
    """

    names: list[str]
    keys: list[str]
    utt: dict[str, bool]
    dims: dict[str, int]
    feats: dict[str, Any]
    present: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    times: dict[str, list[np.ndarray | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def load_features(store: FeatureStore, keys: list[str], names: list[str] | None = None,
                  max_frames: int = 256) -> FusionData:
    """Read ``keys`` for ``names`` (outer join: a clip needs at least one of the sets).

    Frame-level sets also bring their stored frame times; beyond ``max_frames`` frames a clip is
    evenly subsampled, frames and times alike (the times stay true seconds).
    """
    joined = store.join(keys, names, how="outer")
    utt, dims, feats, times = {}, {}, {}, {}
    for k in keys:
        fs = store[k]
        utt[k] = fs.level == "utt"
        dims[k] = fs.dim
        if utt[k]:
            feats[k] = joined.features[k]
            continue
        stored = iter(fs.read_times([n for n, p in zip(joined.names, joined.present[k]) if p]))
        feats[k], times[k] = [], []
        for x in joined.features[k]:
            idx = None if x is None else _subsample_index(len(x), max_frames)
            feats[k].append(None if x is None else x[idx])
            times[k].append(None if x is None else next(stored).astype(np.float32)[idx])
    missing = {k: int((~v).sum()) for k, v in joined.present.items() if (~v).any()}
    if missing:
        log.info("clips lacking a set (masked, not dropped): %s", missing)
    return FusionData(joined.names, list(keys), utt, dims, feats, joined.present, times=times)


def _subsample_index(n: int, max_frames: int) -> slice | np.ndarray:
    """Frames kept of a clip of ``n`` frames: all, or ``max_frames`` evenly spaced ones."""
    if n <= max_frames:
        return slice(None)
    return np.linspace(0, n - 1, max_frames).round().astype(int)


def _subsample(x: np.ndarray, max_frames: int) -> np.ndarray:
    return x[_subsample_index(len(x), max_frames)]


@dataclass
class Standardizer:
    """Per-feature mean and std of each set, fitted on training clips only."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, data: FusionData, rows: np.ndarray, enabled: bool = True) -> Standardizer:
        """Fit on ``rows`` (clips present in a set count for it); identity when not ``enabled``."""
        mean, std = {}, {}
        for k in data.keys:
            if not enabled:
                mean[k], std[k] = np.zeros(data.dims[k], np.float32), np.ones(data.dims[k], np.float32)
                continue
            have = rows[data.present[k][rows]]
            if data.utt[k]:
                x = data.feats[k][have]
            else:
                x = np.concatenate([data.feats[k][i] for i in have]) if len(have) else np.zeros((0, data.dims[k]))
            mean[k] = x.mean(0).astype(np.float32) if len(x) else np.zeros(data.dims[k], np.float32)
            s = x.std(0).astype(np.float32) if len(x) else np.ones(data.dims[k], np.float32)
            std[k] = np.where(s > 1e-6, s, 1.0).astype(np.float32)
        return cls(mean, std)

    def stats(self, key: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std ``[D]`` to z-score ``rows`` of set ``key`` with (the same for every clip)."""
        return self.mean[key], self.std[key]

    def state(self) -> dict[str, dict[str, list[float]]]:
        """JSON/torch-saveable form."""
        return {"mean": {k: v.tolist() for k, v in self.mean.items()}, "std": {k: v.tolist() for k, v in self.std.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Standardizer:
        """Inverse of :meth:`state`."""
        return cls({k: np.asarray(v, np.float32) for k, v in state["mean"].items()},
                   {k: np.asarray(v, np.float32) for k, v in state["std"].items()})


def make_batch(data: FusionData, rows: np.ndarray, norm: Any,
               device: str = "cpu") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """Model inputs for ``rows``: per key ``(x [B, T, D], mask [B, T])`` and ``present [B]``.

    ``norm`` gives each row's mean and std through ``norm.stats(key, rows)`` (``[D]`` for all rows
    or ``[B, D]`` per row): a :class:`Standardizer` or a
    :class:`~mer.fusion.normalize.GroupNormalizer`.

    Each key's pair is a :class:`~mer.fusion.models.common.SetBatch`: it unpacks as ``x, mask`` and
    carries ``times`` ``[B, T]`` (seconds; NaN on padding and where unknown) for frame-level sets,
    ``None`` for utterance-level ones.
    """
    inputs, present = {}, {}
    for k in data.keys:
        pres = data.present[k][rows]
        mean, std = norm.stats(k, rows)
        if data.utt[k]:
            x = (data.feats[k][rows] - mean) / std
            x[~pres] = 0.0
            xt = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
            mask = torch.ones(len(rows), 1, dtype=torch.bool)
            times = None
        else:
            per_row = np.ndim(mean) == 2
            clips = [data.feats[k][i] for i in rows]
            t_max = max([len(c) for c in clips if c is not None] or [1])
            xt = torch.zeros(len(rows), t_max, data.dims[k])
            mask = torch.zeros(len(rows), t_max, dtype=torch.bool)
            times = torch.full((len(rows), t_max), float("nan"))
            clip_times = data.times.get(k) or [None] * len(data)
            for j, c in enumerate(clips):
                if c is not None and clip_times[rows[j]] is not None:
                    times[j, :len(c)] = torch.from_numpy(np.asarray(clip_times[rows[j]], np.float32))
                if c is not None:
                    m, s = (mean[j], std[j]) if per_row else (mean, std)
                    xt[j, :len(c)] = torch.from_numpy(((c - m) / s).astype(np.float32))
                    mask[j, :len(c)] = True
        inputs[k] = SetBatch(xt, mask, times).to(device)
        present[k] = torch.from_numpy(pres).to(device)
    return inputs, present
