"""Fusion models: the Audio-Guided Transformer and the baselines, built from their configs."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..config import MODEL_CONFIGS, config_from_dict
from .agt import AudioGuidedTransformer
from .baselines import AttentionFusion, ConcatMLP, SingleMLP

MODELS = ("agt", "concat", "attention", "single")


def build_model(name: str, config: dict[str, Any], dims: dict[str, int], utt: dict[str, bool],
                n_classes: int) -> nn.Module:
    """Instantiate model ``name`` for sets with dims ``dims`` (``utt[key]``: utterance level)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cfg = config_from_dict(MODEL_CONFIGS[name], config)
    if name == "agt":
        return AudioGuidedTransformer(cfg, dims, n_classes, utt)
    if name == "concat":
        return ConcatMLP(cfg, dims, n_classes)
    if name == "attention":
        return AttentionFusion(cfg, dims, n_classes)
    return SingleMLP(cfg, dims, n_classes)


__all__ = ["MODELS", "AttentionFusion", "AudioGuidedTransformer", "ConcatMLP", "SingleMLP", "build_model"]
