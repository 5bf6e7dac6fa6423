"""Stored features as training data: loading, standardisation, batching.

Fusion reads only the feature store (never media or extractors). Clips lacking a set are kept,
with ``present[key]`` False, so the models can mask that modality instead of dropping the clip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mer.store import FeatureStore

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
    """

    names: list[str]
    keys: list[str]
    utt: dict[str, bool]
    dims: dict[str, int]
    feats: dict[str, Any]
    present: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.names)


def load_features(store: FeatureStore, keys: list[str], names: list[str] | None = None,
                  max_frames: int = 256) -> FusionData:
    """Read ``keys`` for ``names`` (outer join: a clip needs at least one of the sets)."""
    joined = store.join(keys, names, how="outer")
    utt, dims, feats = {}, {}, {}
    for k in keys:
        fs = store[k]
        utt[k] = fs.level == "utt"
        dims[k] = fs.dim
        feats[k] = joined.features[k] if utt[k] else [None if x is None else _subsample(x, max_frames)
                                                      for x in joined.features[k]]
    missing = {k: int((~v).sum()) for k, v in joined.present.items() if (~v).any()}
    if missing:
        log.info("clips lacking a set (masked, not dropped): %s", missing)
    return FusionData(joined.names, list(keys), utt, dims, feats, joined.present)


def _subsample(x: np.ndarray, max_frames: int) -> np.ndarray:
    if len(x) <= max_frames:
        return x
    idx = np.linspace(0, len(x) - 1, max_frames).round().astype(int)
    return x[idx]


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

    def state(self) -> dict[str, dict[str, list[float]]]:
        """JSON/torch-saveable form."""
        return {"mean": {k: v.tolist() for k, v in self.mean.items()}, "std": {k: v.tolist() for k, v in self.std.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Standardizer:
        """Inverse of :meth:`state`."""
        return cls({k: np.asarray(v, np.float32) for k, v in state["mean"].items()},
                   {k: np.asarray(v, np.float32) for k, v in state["std"].items()})


def make_batch(data: FusionData, rows: np.ndarray, norm: Standardizer,
               device: str = "cpu") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """Model inputs for ``rows``: per key ``(x [B, T, D], mask [B, T])`` and ``present [B]``."""
    inputs, present = {}, {}
    for k in data.keys:
        pres = data.present[k][rows]
        if data.utt[k]:
            x = (data.feats[k][rows] - norm.mean[k]) / norm.std[k]
            x[~pres] = 0.0
            xt = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)
            mask = torch.ones(len(rows), 1, dtype=torch.bool)
        else:
            clips = [data.feats[k][i] for i in rows]
            t_max = max([len(c) for c in clips if c is not None] or [1])
            xt = torch.zeros(len(rows), t_max, data.dims[k])
            mask = torch.zeros(len(rows), t_max, dtype=torch.bool)
            for j, c in enumerate(clips):
                if c is not None:
                    xt[j, :len(c)] = torch.from_numpy(((c - norm.mean[k]) / norm.std[k]).astype(np.float32))
                    mask[j, :len(c)] = True
        inputs[k] = (xt.to(device), mask.to(device))
        present[k] = torch.from_numpy(pres).to(device)
    return inputs, present
