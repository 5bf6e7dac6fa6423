"""Shared pieces of the fusion models: the input convention and pooling.

Every model's ``forward(inputs, present)`` takes, per feature-set key, ``(x, mask)`` with
``x`` ``[B, T, D]`` float (utterance-level sets have ``T = 1``) and ``mask`` ``[B, T]`` bool (True on
real positions), plus ``present[key]`` ``[B]`` bool (False where the clip lacks that set). It returns
logits ``[B, C]``.

``make_batch`` hands each set over as a :class:`SetBatch`: it unpacks as ``(x, mask)`` like a plain
pair (the baselines and older callers see no difference) and also carries the frames' ``times``
``[B, T]`` in seconds (NaN where unknown and on padding; ``None`` for utterance-level sets). The
AGT reads them with :func:`times_of`; a plain ``(x, mask)`` pair means "times unknown".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

Inputs = dict[str, tuple[Tensor, Tensor]]


class SetBatch(tuple):
    """One set's batch: a ``(x, mask)`` pair that also carries per-frame ``times``.

    Unpacking gives ``x, mask`` (two values), so code written for plain pairs keeps working;
    ``times`` is ``[B, T]`` float seconds from clip start, NaN where unknown or padding, or ``None``.
    """

    times: Tensor | None

    def __new__(cls, x: Tensor, mask: Tensor, times: Tensor | None = None) -> SetBatch:
        obj = super().__new__(cls, (x, mask))
        obj.times = times
        return obj

    def to(self, device: str | torch.device) -> SetBatch:
        """The same batch on ``device``."""
        x, mask = self
        return SetBatch(x.to(device), mask.to(device), None if self.times is None else self.times.to(device))


def times_of(inp: tuple[Tensor, Tensor]) -> Tensor | None:
    """Per-frame times ``[B, T]`` of one set's input (NaN: unknown), or ``None`` when not given."""
    return getattr(inp, "times", None)


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
