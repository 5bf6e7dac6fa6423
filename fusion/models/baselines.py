"""Baselines in the same framework as the AGT: one modality, concatenation, MER attention fusion."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import AttentionConfig, ConcatConfig, SingleConfig
from .common import Inputs, mlp, pooled


class SingleMLP(nn.Module):
    """MLP on the (mean-pooled) features of a single set."""

    def __init__(self, cfg: SingleConfig, dims: dict[str, int], n_classes: int) -> None:
        super().__init__()
        if len(dims) != 1:
            raise ValueError(f"model 'single' takes exactly one feature set, got {len(dims)}: {', '.join(dims)}")
        self.key = next(iter(dims))
        self.net = mlp(dims[self.key], cfg.hidden, n_classes, cfg.dropout)

    def forward(self, inputs: Inputs, present: dict[str, Tensor]) -> Tensor:
        return self.net(pooled(inputs, present, self.key))


class ConcatMLP(nn.Module):
    """Concatenation of every set's pooled vector (zeros plus an indicator where absent) -> MLP."""

    def __init__(self, cfg: ConcatConfig, dims: dict[str, int], n_classes: int) -> None:
        super().__init__()
        self.keys = list(dims)
        self.net = mlp(sum(dims.values()) + len(dims), cfg.hidden, n_classes, cfg.dropout)

    def forward(self, inputs: Inputs, present: dict[str, Tensor]) -> Tensor:
        parts = [pooled(inputs, present, k) for k in self.keys]
        flags = torch.stack([present[k] for k in self.keys], dim=1).to(parts[0].dtype)
        return self.net(torch.cat([*parts, flags], dim=1))


class AttentionFusion(nn.Module):
    """The MER baseline's attention fusion: per-set MLP to ``hidden``, attention weights over sets
    computed from their concatenation, weighted sum, linear classifier. Absent sets get no weight."""

    def __init__(self, cfg: AttentionConfig, dims: dict[str, int], n_classes: int) -> None:
        super().__init__()
        self.keys = list(dims)
        self.encoders = nn.ModuleDict({_safe(k): nn.Sequential(nn.Linear(d, cfg.hidden), nn.ReLU(),
                                                               nn.Dropout(cfg.dropout))
                                       for k, d in dims.items()})
        n = len(self.keys)
        self.attention = mlp(n * cfg.hidden, cfg.hidden, n, cfg.dropout)
        self.out = nn.Linear(cfg.hidden, n_classes)

    def forward(self, inputs: Inputs, present: dict[str, Tensor]) -> Tensor:
        hidden = torch.stack([self.encoders[_safe(k)](pooled(inputs, present, k)) for k in self.keys], dim=1)
        scores = self.attention(hidden.flatten(1))  # [B, n]
        mask = torch.stack([present[k] for k in self.keys], dim=1)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # a clip with no set at all: zeros
        return self.out((hidden * weights.unsqueeze(-1)).sum(1))


def _safe(key: str) -> str:
    """ModuleDict keys cannot contain '.' or '/'."""
    return key.replace("/", "__").replace(".", "_")
