"""Video decoding: RGB uint8 frames sampled by timestamp, optionally face-cropped.

Frames are read with decord (one ``VideoReader`` per call, so calls may run concurrently in a
thread pool). Frames are chosen by their presentation timestamps, at ``fps`` frames per second or
as ``num_frames`` evenly spaced frames, and the returned :class:`VideoClip` records the actual
timestamp of each chosen frame. decord refuses a whole file when any packet is damaged, so when it
fails the file is read again with PyAV, which keeps the frames before the damage (a warning is
logged); only when neither yields a frame is :class:`DecodeError` raised.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from decord import VideoReader, cpu
from decord._ffi.base import DECORDError

from mer.extractors.base import VideoClip

from .decode_errors import DecodeError, check_file, reason

__all__ = ["VideoDecodeConfig", "DecodeError", "decode_video", "resize_shorter", "select_frames"]

log = logging.getLogger(__name__)

# What decord raises for unreadable input (DECORDError; RuntimeError "Error reading ..." from its
# Python wrapper; IndexError / ValueError for an index table that does not match the stream).
_DECORD_ERRORS: tuple[type[BaseException], ...] = (DECORDError, RuntimeError, OSError, ValueError, IndexError)
# What PyAV raises for unreadable input (its FFmpegError subclasses are also ValueError / OSError).
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)
# A decoded span this far below the container's declared duration is reported as truncated.
_SHORT_FRACTION = 0.9


@dataclass
class VideoDecodeConfig:
    """Which frames are decoded and how they are shaped; recorded as provenance with the features.

    Exactly one of ``fps`` / ``num_frames`` is used: ``num_frames`` when it is set, else ``fps``;
    with both ``None`` every frame is kept.
    """

    fps: float | None = 2.0  # frames per second sampled by timestamp (None: every frame)
    num_frames: int | None = None  # this many frames evenly spaced over the clip (wins over fps)
    size: int | None = None  # resize so the shorter side is this many pixels (None: keep); unused with faces
    faces: bool = False  # crop the largest face per frame (full frame, centre square, when none)
    face_size: int = 224  # side of the square face crops, in pixels
    face_detector: str = "auto"  # mtcnn, haar, none, or auto (mtcnn when facenet-pytorch imports, else haar)
    face_margin: float = 0.2  # fraction of the face box added on each side of the crop
    require_face: bool = False  # a clip where no frame has a face fails (needs faces)

    def __post_init__(self) -> None:
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive or None, got {self.fps}")
        if self.num_frames is not None and int(self.num_frames) < 1:
            raise ValueError(f"num_frames must be at least 1 or None, got {self.num_frames}")
        if self.size is not None and int(self.size) < 1:
            raise ValueError(f"size must be at least 1 or None, got {self.size}")
        if int(self.face_size) < 1:
            raise ValueError(f"face_size must be at least 1, got {self.face_size}")
        from .face_detectors import detector_choices

        if self.face_detector not in detector_choices():
            raise ValueError(f"face_detector must be one of {', '.join(detector_choices())}, "
                             f"got {self.face_detector!r}")
        if not self.face_margin >= 0:
            raise ValueError(f"face_margin must be >= 0, got {self.face_margin}")
        if self.require_face and not self.faces:
            raise ValueError("require_face needs faces=True (--faces)")

    def record(self) -> dict[str, Any]:
        """The decode settings as a JSON-able dict, for provenance (``fps`` is ``None`` when
        ``num_frames`` decides, so two configs that decode the same frames record the same)."""
        d = dataclasses.asdict(self)
        if self.num_frames is not None:
            d["fps"] = None
        if self.faces:  # the detector that runs, not "auto"
            from .face_detectors import resolve_detector

            d["face_detector"] = resolve_detector(self.face_detector)
        else:  # the face settings change nothing without face crops
            for k in ("face_detector", "face_margin", "require_face"):
                d.pop(k)
        return d


def decode_video(name: str, path: Path, cfg: VideoDecodeConfig | None = None) -> VideoClip:
    """Decode frames of ``path`` as RGB uint8 ``[T, H, W, 3]`` with their timestamps.

    Args:
        name: clip name, used in error messages and in the returned clip.
        path: the video file.
        cfg: decode settings (default: 2 frames per second, original size, no face crop).

    Returns:
        A :class:`VideoClip`: ``frames`` ``[T, H, W, 3]`` uint8 RGB (``[T, S, S, 3]`` with
        ``S = cfg.face_size`` when ``cfg.faces``), ``times`` ``[T]`` float32 seconds, increasing,
        and ``faces`` (frames where a face was found; ``None`` without face crop).

    Raises:
        DecodeError: the file is missing, empty, not decodable, has no video track or no frames.
    """
    cfg = cfg or VideoDecodeConfig()
    path = check_file(name, path)
    partial: str | None = None
    try:
        frames, times = _decode_decord(path, cfg)
    except _DECORD_ERRORS as exc:
        decord_reason = reason(exc)
        log.debug("clip %r: decord failed (%s); trying PyAV", name, decord_reason)
        frames, times, partial = _decode_pyav(name, path, cfg, decord_reason)

    faces: int | None = None
    extras: dict[str, np.ndarray] = {}
    if cfg.faces:
        from .faces import FaceCropper

        track = FaceCropper(face_size=cfg.face_size, margin=cfg.face_margin, detector=cfg.face_detector).track(frames)
        if cfg.require_face and track.found == 0:
            raise DecodeError(name, f"no face found in any of the {len(frames)} frames of {path.name} "
                                    f"({track.detector} detector; --require-face)")
        frames, faces, extras = track.crops, track.found, track.frame_extras()
    elif cfg.size is not None:
        frames = np.stack([resize_shorter(f, cfg.size) for f in frames])
    return VideoClip(name=name, frames=np.ascontiguousarray(frames, dtype=np.uint8),
                     times=np.asarray(times, dtype=np.float32), faces=faces, partial=partial,
                     frame_extras=extras)


def select_frames(starts: np.ndarray, end: float, fps: float | None, num_frames: int | None) -> np.ndarray:
    """Indices of the frames to keep, given each frame's start time (seconds) and the clip end.

    ``num_frames``: the frame showing at the centre of each of ``num_frames`` equal segments of the
    clip (a frame repeats when the clip has fewer frames). ``fps``: the frame showing at each time
    ``t0 + k / fps`` before the end, without repeats. Both ``None``: every frame. Indices come back
    in time order.
    """
    starts = np.asarray(starts, dtype=np.float64)
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(starts, kind="stable")  # presentation order, whatever the index order
    sorted_starts = starts[order]
    t0 = float(sorted_starts[0])
    end = max(float(end), float(sorted_starts[-1]))
    if num_frames is not None:
        span = end - t0
        targets = t0 + (np.arange(num_frames) + 0.5) * span / num_frames
    elif fps is not None:
        count = max(1, int(np.ceil((end - t0) * fps - 1e-9)))
        targets = t0 + np.arange(count) / fps
    else:
        return order.astype(np.int64)
    pos = np.clip(np.searchsorted(sorted_starts, targets + 1e-6, side="right") - 1, 0, n - 1)
    if num_frames is None:
        pos = np.unique(pos)
    return order[pos].astype(np.int64)


def resize_shorter(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``[H, W, 3]`` image so its shorter side is ``size`` pixels, keeping the aspect."""
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    if scale == 1.0:
        return frame
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, (nw, nh), interpolation=interp)


# ---- decord (the normal path) ---------------------------------------------------------------
def _decode_decord(path: Path, cfg: VideoDecodeConfig) -> tuple[np.ndarray, np.ndarray]:
    vr = VideoReader(str(path), ctx=cpu(0))
    n = len(vr)
    if n == 0:
        raise RuntimeError("the video track has no frames")
    stamps = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64).reshape(n, 2)
    if not np.all(np.isfinite(stamps)):  # no usable timestamps: index / average rate
        rate = vr.get_avg_fps() or 25.0
        stamps = np.stack([np.arange(n) / rate, (np.arange(n) + 1) / rate], axis=1)
    idx = select_frames(stamps[:, 0], float(stamps[:, 1].max()), cfg.fps, cfg.num_frames)
    batch = vr.get_batch(idx.tolist())
    frames = _as_numpy(batch)
    if frames.ndim != 4 or frames.shape[0] != len(idx) or frames.shape[-1] != 3:
        raise RuntimeError(f"unexpected frame batch shape {frames.shape}")
    return frames.astype(np.uint8, copy=False), np.maximum(stamps[idx, 0], 0.0)


def _as_numpy(batch: Any) -> np.ndarray:
    """A decord batch as numpy, whichever bridge (native, torch, ...) is set process-wide."""
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    if hasattr(batch, "numpy"):
        return batch.numpy()
    return np.asarray(batch)


# ---- PyAV (fallback for files decord refuses, e.g. truncated ones) ---------------------------
def _decode_pyav(name: str, path: Path, cfg: VideoDecodeConfig,
                 decord_reason: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Two passes: timestamps of every decodable frame, then the chosen frames as RGB.

    Returns frames, their times, and why only part of the file decoded (``None`` when all of it did).
    """
    starts, end, broken = _pyav_pass(name, path, keep=None)
    if len(starts) == 0:
        problem = f"no video frames decoded from {path} ({broken or decord_reason})"
        raise DecodeError(name, problem)
    idx = select_frames(starts, end, cfg.fps, cfg.num_frames)
    wanted = {int(i) for i in idx}
    kept, _, _ = _pyav_pass(name, path, keep=wanted)
    got = [i for i in idx.tolist() if i in kept]
    if not got:
        raise DecodeError(name, f"no video frames decoded from {path} ({broken or decord_reason})")
    frames = np.stack([kept[i] for i in got])
    log.warning("clip %r: decord could not read %s (%s); PyAV decoded %d frames up to %.2f s%s",
                name, path.name, decord_reason, len(starts), end,
                f", then stopped: {broken}" if broken else "")
    partial = f"video decoding stopped after {end:.2f} s ({broken})" if broken else None
    return frames, np.maximum(starts[got], 0.0), partial


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """Duration of the video stream (or the container) from the header, if it gives one."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _pyav_pass(name: str, path: Path, keep: set[int] | None) -> tuple[Any, float, str | None]:
    """Decode the first video stream in order.

    With ``keep=None``: ``(start times [N], end time, why it stopped early or None)``. Otherwise:
    ``({index: rgb frame} for the indices in keep, end, reason)``.
    """
    try:
        container = av.open(str(path), mode="r")
    except _AV_ERRORS as exc:
        raise DecodeError(name, f"cannot open {path}: {reason(exc)}") from exc
    starts: list[float] = []
    kept: dict[int, np.ndarray] = {}
    end = 0.0
    broken: str | None = None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise DecodeError(name, f"no video track in {path} (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25.0)
        i = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else i / rate
                dur = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1.0 / rate
                end = max(end, t + dur)
                if keep is None:
                    starts.append(t)
                elif i in keep:
                    kept[i] = frame.to_ndarray(format="rgb24")
                    if len(kept) == len(keep):
                        break
                i += 1
        except _AV_ERRORS as exc:
            broken = reason(exc)
        declared = _declared_seconds(container, stream)
        if broken is None and keep is None and declared and end < _SHORT_FRACTION * declared:
            broken = f"the file declares {declared:.2f} s (truncated file?)"
    finally:
        container.close()
    if keep is None:
        return np.asarray(starts, dtype=np.float64), end, broken
    return kept, end, broken
