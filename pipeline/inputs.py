"""Turn one clip-table row into the decoded item an extractor of a modality receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mer.extractors.base import AudioClip, TextClip, VideoClip
from mer.store.tables import ClipTable

from .decode_audio import AudioDecodeConfig, decode_audio
from .decode_errors import DecodeError
from .decode_video import VideoDecodeConfig, decode_video


@dataclass
class DecodeSettings:
    """How a stage decodes its inputs; recorded in the feature set's provenance."""

    audio: AudioDecodeConfig = field(default_factory=AudioDecodeConfig)
    video: VideoDecodeConfig = field(default_factory=VideoDecodeConfig)
    text_column: str = "text"  # clip-table column with the subtitle: text, english or chinese

    def record(self, modality: str) -> dict[str, Any]:
        """The settings that shape ``modality``'s inputs (only those: a video set ignores audio)."""
        if modality == "audio":
            return {"audio": self.audio.record()}
        if modality == "video":
            return {"video": self.video.record()}
        return {"text_column": self.text_column}


def load_item(modality: str, table: ClipTable, name: str, settings: DecodeSettings) -> AudioClip | VideoClip | TextClip:
    """Decode clip ``name`` for ``modality``; bad input raises :class:`DecodeError` naming the clip."""
    if modality == "text":
        if settings.text_column not in table.columns:
            raise DecodeError(name, f"clip table has no column {settings.text_column!r}")
        return TextClip(name, table.column(settings.text_column)[name])
    if modality == "audio":
        cols = [c for c in ("audio", "video") if c in table.columns and table.column(c)[name]]
        if not cols:
            raise DecodeError(name, "no audio or video path in the clip table")
        return decode_audio(name, table.media_path(name, cols[0]), settings.audio)
    if modality == "video":
        if "video" not in table.columns or not table.column("video")[name]:
            raise DecodeError(name, "no video path in the clip table")
        return decode_video(name, table.media_path(name, "video"), settings.video)
    raise ValueError(f"unknown modality {modality!r}")
