"""Audio decoding: any audio file, or the audio track of a video, to mono float32 at 16 kHz.

Decoding uses PyAV (FFmpeg). Multi-channel audio is down-mixed by FFmpeg's normalised rematrix, the
same mix as ``ffmpeg -i clip.mp4 -ac 1 -ar 16000 clip.wav`` (stereo becomes ``(L + R) / 2``), so
features match those computed from wav files extracted with the ffmpeg command line as MERTools
does. ``AudioClip.offset`` is the time of the first sample on the clip clock shared with the video
decoder (:mod:`mer.pipeline.media_timing`): 0 for an audio file, the audio track's start relative
to the file's presentation start for a video (1.0 when the audio starts a second after the
picture). Every problem with the input is raised as :class:`DecodeError` naming the clip; a file
that breaks off part way returns what decoded and logs a warning. Each call opens its own
container, so calls may run concurrently in a thread pool.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from mer.extractors.base import AudioClip

from .decode_errors import DecodeError, check_file, reason
from .media_timing import clip_zero, stream_start

__all__ = ["AudioDecodeConfig", "DecodeError", "decode_audio", "windows"]

log = logging.getLogger(__name__)

# Errors PyAV raises for bad input: FFmpegError (InvalidDataError etc. are also ValueError; the
# file-system ones are also OSError), ValueError (e.g. a frame the resampler cannot take) and
# OSError from the file system itself.
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)

# A decoded duration this far below the container's declared duration is reported as truncated.
_SHORT_FRACTION = 0.9


@dataclass
class AudioDecodeConfig:
    """How audio is decoded; recorded as provenance with the features."""

    sample_rate: int = 16000  # output rate in Hz (the speech encoders expect 16000)
    max_seconds: float | None = None  # keep at most this many seconds from the start (None: all)

    def __post_init__(self) -> None:
        if int(self.sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        self.sample_rate = int(self.sample_rate)
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive or None, got {self.max_seconds}")

    def record(self) -> dict[str, Any]:
        """The decode settings as a JSON-able dict, for provenance."""
        return dataclasses.asdict(self)


def decode_audio(name: str, path: Path, cfg: AudioDecodeConfig | None = None) -> AudioClip:
    """Decode the audio of ``path`` (an audio file or a video with an audio track).

    Args:
        name: clip name, used in error messages and in the returned clip.
        path: the media file.
        cfg: decode settings (default: 16 kHz, whole clip).

    Returns:
        An :class:`AudioClip` with mono float32 samples in [-1, 1] at ``cfg.sample_rate``, and
        ``offset``: seconds of the first sample on the clip clock.

    Raises:
        DecodeError: the file is missing, empty, not decodable, has no audio track or no samples.
    """
    cfg = cfg or AudioDecodeConfig()
    path = check_file(name, path)
    sr = cfg.sample_rate
    max_samples = None if cfg.max_seconds is None else int(round(cfg.max_seconds * sr))

    try:
        container = av.open(str(path), mode="r")
    except _AV_ERRORS as exc:
        raise DecodeError(name, f"cannot open {path}: {reason(exc)}") from exc

    chunks: list[np.ndarray] = []
    n = 0
    broken: str | None = None  # why decoding stopped early, if it did
    declared: float | None = None  # duration the container claims, in seconds
    first: float | None = None  # container time of the first decoded sample, in seconds
    zero = 0.0  # the clip clock's zero, in container seconds
    try:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise DecodeError(name, f"no audio track in {path} (streams: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        declared = _wav_header_seconds(path) or _declared_seconds(container, stream)
        zero = clip_zero(container)
        first = stream_start(stream)
        resampler: av.AudioResampler | None = None
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if resampler is None:
                        resampler = _resampler(frame, sr)
                        if frame.time is not None:  # where the samples really start
                            first = float(frame.time)
                    for out in resampler.resample(frame):
                        n += _append(chunks, out)
                if max_samples is not None and n >= max_samples:
                    break
            if resampler is not None:
                for out in resampler.resample(None):  # flush the resampler's delay
                    n += _append(chunks, out)
        except _AV_ERRORS as exc:
            broken = reason(exc)
    finally:
        container.close()

    if n == 0:
        problem = f"no audio samples decoded from {path}"
        raise DecodeError(name, f"{problem} ({broken})" if broken else problem)

    samples = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if max_samples is not None:
        samples = samples[:max_samples]
    if not np.all(np.isfinite(samples)):
        log.warning("clip %r: non-finite audio samples replaced by 0", name)
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    samples = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)

    got = len(samples) / sr
    partial: str | None = None
    if broken:
        partial = f"audio decoding stopped after {got:.2f} s ({broken})"
        log.warning("clip %r: %s; keeping what decoded", name, partial)
    elif declared and max_samples is None and got < _SHORT_FRACTION * declared:
        partial = f"decoded {got:.2f} s of audio but {path.name} declares {declared:.2f} s (truncated file?)"
        log.warning("clip %r: %s", name, partial)
    offset = 0.0 if first is None or abs(first - zero) < 1e-6 else first - zero
    return AudioClip(name=name, samples=samples, sample_rate=sr, partial=partial, offset=offset)


def windows(samples: np.ndarray, sample_rate: int, window_s: float = 10.0) -> list[np.ndarray]:
    """Split ``samples`` into consecutive windows of ``window_s`` seconds (the last one shorter).

    For encoders that see a fixed span at a time and pool over windows (the MER2024 baseline uses
    10 s). The windows are views of ``samples``; an empty input gives an empty list.
    """
    if not window_s > 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    step = max(1, int(round(window_s * sample_rate)))
    return [samples[i:i + step] for i in range(0, len(samples), step)]


# ---- helpers ----------------------------------------------------------------------------------
def _resampler(frame: av.AudioFrame, rate: int) -> av.AudioResampler:
    """Resampler to mono at ``rate``.

    Mono input goes straight to float32. Multi-channel input goes through signed 16-bit, because
    FFmpeg normalises the down-mix matrix only for integer output (for float output stereo would
    become ``0.707 * (L + R)``, louder than either channel and able to clip).
    """
    channels = frame.layout.nb_channels
    fmt = "flt" if channels == 1 else "s16"
    return av.AudioResampler(format=fmt, layout="mono", rate=rate)


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    """Append a resampled mono frame as float32; return its sample count."""
    a = frame.to_ndarray().reshape(-1)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    else:
        a = a.astype(np.float32, copy=False)
    if a.size:
        chunks.append(a)
    return int(a.size)


def _declared_seconds(container: av.container.InputContainer, stream: av.audio.stream.AudioStream) -> float | None:
    """Duration of the audio stream (or the container) from the header, if it gives one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _wav_header_seconds(path: Path) -> float | None:
    """Duration a RIFF/WAVE file's ``data`` chunk header declares, or None for other files.

    FFmpeg caps a WAV's duration at what the file holds, so a WAV cut short looks whole to it; the
    header written before the cut still says how long the audio was. Streamed WAVs whose header
    carries no size (0 or 0xFFFFFFFF) give None.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            rate = align = 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) < 14:
                        return None
                    rate, align = struct.unpack("<I", fmt[4:8])[0], struct.unpack("<H", fmt[12:14])[0]
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    if not rate or not align or size in (0, 0xFFFFFFFF):
                        return None
                    return size / align / rate
                else:
                    f.seek(size + size % 2, 1)  # chunks are padded to an even size
    except OSError:
        return None
