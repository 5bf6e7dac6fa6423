"""Shared pieces of the fusion models: the input convention and pooling.

Every model's ``forward(inputs, present)`` takes, per feature-set key, ``(x, mask)`` with
``x`` ``[B, T, D]`` float (utterance-level sets have ``T = 1``) and ``mask`` ``[B, T]`` bool (True on
real positions), plus ``present[key]`` ``[B]`` bool (False where the clip lacks that set). It returns
logits ``[B, C]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Inputs = dict[str, tuple[Tensor, Tensor]]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` ``[B, T, D]`` over positions where ``mask`` ``[B, T]`` is True (zeros if none)."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def pooled(inputs: Inputs, present: dict[str, Tensor], key: str) -> Tensor:
    """Masked mean of one set's frames, zeroed where the clip lacks the set."""
    x, mask = inputs[key]
    return masked_mean(x, mask) * present[key].to(x.dtype).unsqueeze(-1)


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))


def modality_of(key: str) -> str:
    """``audio/whisper-base`` -> ``audio``."""
    return key.split("/", 1)[0]


def drop_modalities(present: dict[str, Tensor], keys: list[str], p: float, training: bool) -> dict[str, Tensor]:
    """Training-time modality dropout: hide each of ``keys`` for a clip with probability ``p``."""
    if not training or p <= 0:
        return present
    out = dict(present)
    for k in keys:
        keep = torch.rand(present[k].shape, device=present[k].device) >= p
        out[k] = present[k] & keep
    return out
