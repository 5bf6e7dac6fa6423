"""The extractor contract, the decoded inputs it receives, and the registry.

An extractor is a pure function of decoded inputs: ``list of decoded items -> list of Features``.
It never opens media files, never writes the store and never knows about dask. Its config
dataclass is its provenance. Adding a model touches one module: subclass :class:`Extractor`, give
it a :class:`ExtractorConfig` subclass with commented fields, decorate it with
:func:`register_extractor`, and import the module in ``extractors/__init__.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)

MODALITIES = ("video", "audio", "text")
ANY = "any"  # modality of extractors that serve every stage (precomputed tables)


# ---- decoded inputs (produced by mer.pipeline's decoders) ---------------------------------
@dataclass
class AudioClip:
    """Decoded speech: mono float32 samples in [-1, 1] at ``sample_rate`` Hz.

    ``offset`` is the time of the first sample, in seconds on the clip clock the video frame times
    use (see ``mer.pipeline.media_timing``). Extractors give frame times from the first sample;
    the stage adds ``offset`` when it writes them (``mer.pipeline.stage.clip_clock``).
    """

    name: str
    samples: np.ndarray
    sample_rate: int = 16000
    partial: str | None = None  # why only part of the file decoded (the samples are what came before), or None
    offset: float = 0.0  # seconds of the first sample on the clip clock (audio starting after the video: > 0)

    @property
    def seconds(self) -> float:
        """Duration in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass
class VideoClip:
    """Decoded frames ``[T, H, W, 3]`` uint8 RGB with their timestamps (seconds from clip start).

    ``faces`` counts frames where a face was found and cropped (``None`` when face crop was off);
    ``partial`` says why only part of the file decoded (the frames are those before), or is ``None``.
    ``frame_extras`` holds numbers per decoded frame, each ``[T]`` float32 aligned with ``times``
    (e.g. the face box and detector score of each frame); the stage stores them beside the features
    whatever the set's level.
    """

    name: str
    frames: np.ndarray
    times: np.ndarray
    faces: int | None = None
    partial: str | None = None
    frame_extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TextClip:
    """One subtitle."""

    name: str
    text: str


@dataclass
class ClipRef:
    """Just the clip's name: the input of extractors that decode nothing (``decodes = False``)."""

    name: str


@dataclass
class Features:
    """What an extractor returns per clip: ``[D]`` (utterance) or ``[T, D]`` plus frame times."""

    values: np.ndarray
    times: np.ndarray | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # e.g. {"truncated_tokens": 12}


# ---- configs --------------------------------------------------------------------------------
@dataclass
class ExtractorConfig:
    """Fields every extractor has; subclasses add their own, each with a comment.

    ``SPEED_FIELDS`` names the fields that change only how fast (or where) the vectors are computed,
    never the vectors: they are left out of :meth:`identity`, so a set started with one value is
    resumed with another. A subclass with more such knobs extends the tuple.
    """

    SPEED_FIELDS: ClassVar[tuple[str, ...]] = ("device", "batch_size")

    model: str = ""  # Hugging Face hub id, open_clip name, or a local directory / weights file
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    dtype: str = "float32"  # compute dtype: float32, float16 or bfloat16 (half types on GPU)
    level: str = "utt"  # "utt" (one vector per clip) or "frame" (one per frame / token / window)
    batch_size: int = 8  # clips per forward pass

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """Fields that change the vectors (all but :attr:`SPEED_FIELDS`), as configured; the
        extractor's :meth:`Extractor.identity` replaces values such as ``"auto"`` by what they resolved to."""
        d = self.to_dict()
        for k in self.SPEED_FIELDS:
            d.pop(k, None)
        return d


# ---- the base class -------------------------------------------------------------------------
class Extractor(ABC):
    """Base class of every feature extractor.

    Class attributes set by subclasses: ``name`` (set by :func:`register_extractor`), ``modality``,
    ``config_class`` and ``levels`` (the output levels it supports).
    """

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""
    config_class: ClassVar[type[ExtractorConfig]] = ExtractorConfig
    levels: ClassVar[tuple[str, ...]] = ("utt",)
    decodes: ClassVar[bool] = True  # False: the stage passes ClipRef items and decodes no media

    def __init__(self, config: ExtractorConfig) -> None:
        if config.level not in self.levels:
            raise ValueError(f"extractor {self.name!r} supports levels {self.levels}, not {config.level!r}")
        self.config = config

    @property
    @abstractmethod
    def dim(self) -> int:
        """Output feature dimension D."""

    @abstractmethod
    def extract(self, items: list[Any]) -> list[Features]:
        """Features for each decoded item, in order. Raise only for errors that doom the batch;
        a problem with one item should be raised as :class:`ItemError` naming it."""

    def weights_path(self) -> Path | None:
        """Local file or folder holding the weights (hashed into provenance), if any."""
        p = Path(self.config.model)
        return p if self.config.model and p.exists() else None

    def identity(self) -> dict[str, Any]:
        """The config's identity (:meth:`ExtractorConfig.identity`) as this loaded extractor runs it:
        subclasses replace settings chosen at load time (``compute_type="auto"``) by what they resolved
        to, so a set started on one device class is refused on another instead of silently mixed."""
        return self.config.identity()

    def revision(self) -> str | None:
        """Commit hash of the Hugging Face hub snapshot the weights were loaded from; ``None`` for
        local weights (their content hash identifies them) or when nothing came from the hub."""
        if not self.config.model or self.weights_path() is not None or Path(self.config.model).exists():
            return None
        return loaded_revision(getattr(self, "model", None)) or hub_revision(self.config.model)

    def decode_settings(self) -> dict[str, Any]:
        """Decode settings this extractor needs (e.g. ``{"sample_rate": 16000}``)."""
        return {}

    def features_version(self) -> int:
        """Version of the vectors this config gives; bump it when a code change alters them, so a
        feature set written by the older code is refused instead of silently mixed (1: never changed)."""
        return 1


class ItemError(ValueError):
    """One input item cannot be processed (empty audio, empty text...): the stage records it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"clip {name!r}: {problem}")
        self.name = name
        self.problem = problem


class ModelLoadError(RuntimeError):
    """An extractor's model could not be loaded (wrong id or path, missing files, bad option)."""


# ---- registry -------------------------------------------------------------------------------
REGISTRY: dict[str, type[Extractor]] = {}


def register_extractor(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    """Class decorator: make an extractor available under ``name`` (CLI ``--extractor name``)."""

    def wrap(cls: type[Extractor]) -> type[Extractor]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"extractor name {name!r} is already registered by {REGISTRY[name].__qualname__}")
        if cls.modality not in (*MODALITIES, ANY):
            raise ValueError(f"extractor {name!r} has modality {cls.modality!r}, expected one of {MODALITIES}")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return wrap


def get_extractor(name: str) -> type[Extractor]:
    """The registered class called ``name``; a clear error lists the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown extractor {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None


def extractor_names(modality: str | None = None) -> list[str]:
    """Registered names, optionally only those of one modality."""
    return sorted(k for k, v in REGISTRY.items() if modality is None or v.modality in (modality, ANY))


def loaded_revision(model: Any) -> str | None:
    """The hub commit a transformers model records it was loaded from (``config._commit_hash``,
    set by transformers 4), or ``None``."""
    config = getattr(model, "config", None)
    commit = getattr(config, "_commit_hash", None) if config is not None else None
    return commit if isinstance(commit, str) and commit else None


def hub_revision(repo_id: str, revision: str = "main") -> str | None:
    """Commit hash of the snapshot of hub repo ``repo_id`` that the local Hugging Face cache resolves
    ``revision`` to (``refs/<revision>``, as the loaders just did), without any network access;
    ``None`` when the repo is not in the cache or ``huggingface_hub`` is missing."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except ImportError:
        return None
    except (OSError, ValueError) as exc:  # not in the cache (LocalEntryNotFoundError), not a repo id
        log.warning("cannot tell which snapshot of %r was loaded (%s); its revision is not recorded", repo_id, exc)
        return None
    return path.name if path.parent.name == "snapshots" else None


def torch_dtype(name: str):  # -> torch.dtype
    """``"bfloat16"`` -> ``torch.bfloat16`` (imports torch lazily)."""
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"dtype must be one of float32, float16, bfloat16; got {name!r}")
    return table[name]


def masked_mean(hidden, mask):  # torch tensors [B, T, D], [B, T] -> [B, D]
    """Mean over the positions where ``mask`` is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
