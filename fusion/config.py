"""Architecture and training as data: one config dataclass per model, plus the training config.

Every run saves the resolved configs in ``runs/NAME/config.json``; a model is rebuilt from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AGTConfig:
    """Audio-Guided Transformer (see fusion/README.md for the diagram)."""

    width: int = 64  # shared token width d after the per-modality projections
    heads: int = 4  # attention heads in every attention block
    utt_tokens: int = 2  # tokens made from one utterance-level vector (frame-level sets use their frames)
    intra_layers: int = 1  # self-attention layers inside each modality (intra-channel)
    inter_layers: int = 1  # audio-queries cross-attention layers per guided modality (inter-channel)
    share_blocks: bool = True  # one intra stack for all sets and one inter stack for all guided streams
    # (sets told apart by their learned embeddings); run as one batched call each, ~3x cheaper
    bidirectional: bool = False  # ablation: video/text tokens also attend to audio before the fusion
    fusion: str = "gate"  # "gate": learned softmax gate over the streams; "concat": concatenate -> MLP
    ffn_mult: int = 2  # hidden size of the feed-forward blocks, in multiples of width
    dropout: float = 0.2  # dropout in projections, attention and feed-forward blocks
    modality_dropout: float = 0.1  # training only: chance to hide each non-guide modality of a clip
    guide: str = "audio"  # modality whose tokens are the queries (the paper: audio)


@dataclass
class ConcatConfig:
    """Baseline: concatenate the (mean-pooled) modality vectors, then an MLP."""

    hidden: int = 256  # MLP hidden size
    dropout: float = 0.3  # dropout after the hidden layer


@dataclass
class AttentionConfig:
    """Baseline of the MER challenge: per-modality MLP to ``hidden``, learned attention weights over
    modalities, weighted sum, linear classifier."""

    hidden: int = 128  # per-modality projection size
    dropout: float = 0.3  # dropout after the projections


@dataclass
class SingleConfig:
    """Baseline: an MLP on one modality."""

    hidden: int = 256  # MLP hidden size
    dropout: float = 0.3  # dropout after the hidden layer


MODEL_CONFIGS: dict[str, type] = {"agt": AGTConfig, "concat": ConcatConfig, "attention": AttentionConfig,
                                  "single": SingleConfig}


@dataclass
class TrainConfig:
    """How each fold is trained."""

    epochs: int = 60  # maximum epochs per fold
    batch_size: int = 64  # clips per step
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-2  # AdamW weight decay
    schedule: str = "cosine"  # "cosine" (to 0 over `epochs`) or "plateau" (halve when val WAF stalls)
    patience: int = 12  # early stopping: epochs without a better validation WAF
    class_weights: bool = False  # weight the loss by inverse class frequency of the training fold
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    standardize: bool = True  # z-score every feature with the training fold's mean and std
    seed: int = 0  # seeds folds, initialisation and batch order
    device: str = "cpu"  # "cpu" or "cuda"
    max_frames: int = 256  # frame-level sets: frames kept per clip (evenly subsampled beyond)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields: {', '.join(sorted(names))}")
    return cls(**data)


@dataclass
class RunConfig:
    """Everything that defines a training run (saved as config.json)."""

    features: list[str]  # feature set keys, e.g. ["audio/whisper-base", "video/openface-au", "text/minilm"]
    model: str  # agt | concat | attention | single
    model_config: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    folds: int = 5  # k of k-fold cross-validation (1 with a fixed validation list)
    group_col: str | None = None  # clip-table column for grouped folds (e.g. speaker)
    classes: list[str] = field(default_factory=list)  # label set, in output order
