"""openSMILE acoustic features (eGeMAPS, ComParE...): the affective-computing standard, offline.

The ``opensmile`` package ships the openSMILE library and its configs, so nothing is downloaded.
Utterance level is the feature set's functionals (eGeMAPSv02: 88 values, ComParE_2016: 6,373), one
vector per clip; frame level is its low-level descriptors (eGeMAPSv02: 25, ComParE_2016: 65), one
row per 10 ms hop, stored with opensmile's frame start times. The dimension is read from the
config, without processing audio.

Each clip is processed on its own (``Smile.process_signal``), so a clip's vectors never depend on
its batch. Samples are clipped to the int16 range first: opensmile converts float to int16 by
scaling by 32768, which would wrap a full-scale sample of 1.0 around to -32768. A clip shorter than
opensmile's longest analysis window (60 ms for eGeMAPS and ComParE) gives no frame, for which
opensmile returns NaN; such a clip, and any other output with a NaN or Inf, is an
:class:`ItemError` naming the clip, never stored.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import AudioClip, Extractor, ExtractorConfig, Features, ItemError, register_extractor

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_SET = "eGeMAPSv02"
LEVELS = {"utt": "Functionals", "frame": "LowLevelDescriptors"}  # mer level -> opensmile.FeatureLevel
INT16_MAX = 32767 / 32768  # largest float opensmile's float -> int16 conversion does not wrap


@dataclass
class OpenSmileConfig(ExtractorConfig):
    """openSMILE settings. ``model`` and ``feature_set`` name the same thing: give either (``-m NAME``
    or ``-O feature_set=NAME``); after construction both hold the resolved name."""

    model: str = ""  # the feature set's name, recorded as the model so the default set key reads
    # audio/opensmile-eGeMAPSv02-utt; "" = feature_set (or eGeMAPSv02 when both are empty)
    feature_set: str = ""  # an opensmile.FeatureSet name: eGeMAPSv02 (88 functionals, 25 LLDs),
    # ComParE_2016 (6373 / 65; its values reach 1e11: store them with --store-dtype float32),
    # GeMAPSv01b (62 / 18), emobase (988 / 26), IS09 ... IS13; "" = model, else eGeMAPSv02
    batch_size: int = 16  # clips per extract call; opensmile processes them one after another

    def __post_init__(self) -> None:
        if self.model and self.feature_set and self.model != self.feature_set:
            raise ValueError(f"opensmile: model {self.model!r} and feature_set {self.feature_set!r} disagree; "
                             "give the feature set once (-m NAME or -O feature_set=NAME)")
        name = self.feature_set or self.model or DEFAULT_SET
        self.model = self.feature_set = name
        if self.dtype != "float32":
            raise ValueError(f"opensmile computes float32 only; got dtype {self.dtype!r}")


@register_extractor("opensmile")
class OpenSmile(Extractor):
    """openSMILE functionals (utterance level) or low-level descriptors (frame level)."""

    modality = "audio"
    config_class = OpenSmileConfig
    levels = ("utt", "frame")

    def __init__(self, config: OpenSmileConfig) -> None:
        super().__init__(config)
        import opensmile

        known = list(opensmile.FeatureSet.__members__)
        if config.feature_set not in known:
            raise ValueError(f"unknown opensmile feature set {config.feature_set!r}; known: {', '.join(known)}")
        with warnings.catch_warnings(record=True) as caught:  # deprecated sets (eGeMAPSv01b...) warn
            warnings.simplefilter("always")
            self.smile = opensmile.Smile(feature_set=opensmile.FeatureSet[config.feature_set],
                                         feature_level=opensmile.FeatureLevel[LEVELS[config.level]])
        for w in caught:
            log.warning("opensmile: %s", w.message)
        self.version = str(opensmile.__version__)
        self.config_root = Path(self.smile.default_config_root)

    @property
    def dim(self) -> int:
        """Number of features of the set at this level (from its config, no audio processed)."""
        return len(self.smile.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """openSMILE's name of each column (e.g. ``F0semitoneFrom27.5Hz_sma3nz_amean``)."""
        return list(self.smile.feature_names)

    def weights_path(self) -> Path:
        """The config folder the package ships (every feature set's ``.conf`` files): hashed as the
        weights, so an edited or different config is told apart even at the same package version."""
        return self.config_root

    def revision(self) -> str | None:
        """Nothing comes from the Hugging Face hub."""
        return None

    def decode_settings(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE}

    def identity(self) -> dict[str, Any]:
        """The config's identity plus the ``opensmile`` package version (its library computes the
        values), so a set written with another version is refused instead of silently mixed."""
        d = super().identity()
        d["opensmile_version"] = self.version
        return d

    def _process(self, clip: AudioClip) -> tuple[np.ndarray, np.ndarray]:
        """``(values [T, D] float32, frame start times [T] in seconds)`` of one clip."""
        samples = np.clip(np.asarray(clip.samples, dtype=np.float32), -1.0, INT16_MAX)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Segment too short")  # NaN output: handled below
            df = self.smile.process_signal(samples, clip.sample_rate)
        values = df.to_numpy(dtype=np.float32)
        times = df.index.get_level_values("start").total_seconds().to_numpy(dtype=np.float32)
        return values, times

    def extract(self, items: list[AudioClip]) -> list[Features]:
        """Functionals ``[D]`` (utt) or LLDs ``[T, D]`` with frame start times (frame) per clip; a clip
        that is not 16 kHz, is empty, or gives NaN/Inf (too short for any frame) is an :class:`ItemError`."""
        out: list[Features] = []
        for clip in items:
            if clip.sample_rate != SAMPLE_RATE:
                raise ItemError(clip.name, f"expected {SAMPLE_RATE} Hz audio, got {clip.sample_rate} Hz")
            if len(clip.samples) == 0:
                raise ItemError(clip.name, "no audio samples")
            values, times = self._process(clip)
            bad = ~np.isfinite(values)
            if bad.all():
                raise ItemError(clip.name, f"{clip.seconds:.3f} s is too short for opensmile {self.config.model} "
                                "(no analysis frame fits; its windows need about 0.06 s)")
            if bad.any():
                raise ItemError(clip.name, f"opensmile {self.config.model} gave {int(bad.sum())} NaN/Inf values "
                                f"of {bad.size}")
            if self.config.level == "utt":
                out.append(Features(values[0]))
            else:  # frame start times from the first sample (the stage moves them to the clip clock)
                out.append(Features(values, times=times))
        return out
