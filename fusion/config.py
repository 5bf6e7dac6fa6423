"""Architecture and training as data: one config dataclass per model, plus the training config.

Every run saves the resolved configs in ``runs/NAME/config.json`` (and, replayable, ``run.yaml``:
:mod:`mer.fusion.runfile`); a model is rebuilt from them.
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
    # --- time (frame-level sets; utterance tokens and null tokens have no time) -----------------
    time_encoding: str = "sine"  # frame tokens get an encoding of their stored time in seconds:
    # "sine" (sin/cos at time_freqs frequencies -> linear to width), "learned" (a table of vectors
    # on a grid of seconds, linearly interpolated), "none" (frames are an unordered set)
    time_scale: float = 32.0  # seconds: longest sine period / span of the learned table (clamped beyond)
    time_freqs: int = 8  # sine periods time_scale / 2^j, j < time_freqs (32 s .. 0.25 s); the learned
    # table has a knot every time_scale / 2^(time_freqs-1) seconds (the shortest period)
    align_window: float = 0.0  # seconds; > 0: an audio frame query attends only to frames of the other
    # set within +-align_window of it (plus its null token; frames of unknown time stay visible)
    pool_null: bool = False  # ablation: True pools the always-valid null query into the streams too
    # (the behaviour of runs made before this field; False pools real tokens only when there are any)
    linear_skip: bool = False  # add a linear classifier on the (frame-mean) input vectors of all sets
    # (absent sets zeroed) to the AGT's logits ("wide and deep"): the linear model is a special case


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
    schedule: str = "cosine"  # "cosine" (to 0 over `epochs`) or "plateau" (halve when the selection WAF stalls)
    patience: int = 12  # early stopping: epochs without a better selection WAF
    select: str = "inner"  # which clips pick the epoch: "inner": a held-out split of the fold's training
    # clips (grouped like the folds when the run has groups, else stratified); the validation fold is
    # then only predicted once and reported. "outer": the old, optimistic behaviour: the reported
    # validation fold picks the epoch. "last": no early stopping, the model after `epochs` epochs
    inner_frac: float = 0.15  # select="inner": share of the fold's training clips (or groups) held out
    refit: bool = False  # select="inner": False keeps the picked model (trained without the inner clips,
    # whose held-out predictions then describe exactly it: self-training's prior estimates use them);
    # True retrains on all training clips for the picked number of epochs (about twice the time)
    final: bool = False  # after the folds, also train one model on every labelled clip for the median of
    # the folds' trained epoch counts (final.pt); `mer fuse predict` then uses it instead of averaging
    # the fold models. The out-of-fold metrics still describe the fold models (the final model has no
    # held-out clips of its own)
    class_weights: bool = False  # weight the loss by inverse class frequency of the training fold
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    standardize: bool = True  # legacy switch kept for old run configs: False means normalize="none"
    normalize: str = "global"  # "none"; "global": z-score with the training fold's mean and std; "group":
    # z-score each clip with its group's own statistics (all clips of the group, labels never used;
    # new groups at prediction time from their own clips), see fusion/normalize.py
    norm_col: str | None = None  # group mode: clip-table column of the groups (speaker, source...)
    min_group: int = 8  # group mode: a group with fewer clips in a set uses the global statistics
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


# Fields added after runs were already saved, with the value that gives those runs' behaviour. A
# saved config.json lacking such a field gets this value, not the new default, so an old run loads
# the same weights and predicts exactly as before (see :func:`upgrade_run_config`).
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "agt": {"time_encoding": "none", "align_window": 0.0, "pool_null": True, "linear_skip": False},
}


def upgrade_model_config(model: str, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved (resolved) model config with the fields it predates set to their legacy values."""
    legacy = LEGACY_DEFAULTS.get(model, {})
    return {**{k: v for k, v in legacy.items() if k not in saved}, **saved}


def upgrade_run_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json as read from disk, its ``model_config`` upgraded by :func:`upgrade_model_config`."""
    if "model" not in config:
        return config
    return {**config, "model_config": upgrade_model_config(config["model"], config.get("model_config") or {})}


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
