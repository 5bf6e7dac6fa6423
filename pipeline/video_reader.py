"""Reading the chosen frames of a video with PyAV (FFmpeg), for :mod:`mer.pipeline.decode_video`.

Each call opens its own container, so calls may run concurrently in a thread pool (FFmpeg decodes
without holding the GIL). Only what the chosen frames need is decoded:

* the frame index (timestamps, keyframes) comes from demuxing, without decoding
  (:func:`mer.pipeline.media_timing.index_video`);
* a chosen frame whose keyframe lies beyond what was decoded so far is reached by seeking to that
  keyframe, so the groups of pictures between two chosen frames are skipped; a seek that does not
  land before its frame makes the whole clip decode sequentially;
* only the chosen frames are converted to RGB, at the decode size, in the same conversion
  (:class:`FrameShape`), and turned upright and unmirrored as the display matrix says
  (:func:`orientation`).

A damaged packet is counted and decoding resumes at the next keyframe; a file that breaks off keeps
what came before; :func:`read_frames` says what happened in its third return value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from .decode_errors import DecodeError, reason
from .media_timing import VideoIndex, index_video

if TYPE_CHECKING:
    from .decode_video import VideoDecodeConfig

log = logging.getLogger(__name__)

# What PyAV raises for unreadable input (its FFmpegError subclasses are also ValueError / OSError).
_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)
# A decoded span this far below the container's declared duration is reported as truncated.
_SHORT_FRACTION = 0.9
# How frames are scaled to the decode size while converting to RGB (area averaging when shrinking).
_INTERPOLATION = "AREA"
# Containers whose demuxer seeks with a sample index (MP4/MOV, Matroska/WebM cues); in others (MPEG-TS,
# AVI, raw streams) seeking bisects the bytes, so frames are decoded in order instead.
_INDEXED_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})


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


@dataclass
class _Damage:
    """What went wrong while decoding: undecodable packets, and where decoding resumed."""

    packets: int = 0  # packets the decoder refused
    dropped: int = 0  # frames decoded after damage, before the next keyframe (their references are gone)
    first: float | None = None  # clip time of the first refused packet
    last: float | None = None  # clip time of the last refused packet
    why: str = ""  # the first refusal, in words
    resumed: float | None = None  # clip time of the keyframe decoding resumed at after the last damage
    stopped: str | None = None  # the demuxer gave up here (the rest of the file is unreadable)

    def describe(self) -> str | None:
        """One line for ``VideoClip.partial``, or ``None`` when nothing went wrong."""
        parts = []
        if self.packets:
            if self.first is None or self.last is None:  # an untimed stream
                span = "in the stream"
            elif self.first == self.last:
                span = f"at {self.first:.2f} s"
            else:
                span = f"from {self.first:.2f} s to {self.last:.2f} s"
            after = (f"decoding resumed at the keyframe at {self.resumed:.2f} s" if self.resumed is not None
                     else "no frame decoded after them")
            parts.append(f"{self.packets} damaged video packets {span} ({self.why}); {after}")
        if self.stopped:
            parts.append(f"video demuxing stopped: {self.stopped}")
        return "; ".join(parts) or None


class _SeekFailed(Exception):
    """A seek did not land at or before the frame it was for: decode the file sequentially instead."""


def read_frames(name: str, path: Path, cfg: VideoDecodeConfig) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The frames ``cfg`` selects as ``[T, H, W, 3]`` uint8 RGB, upright and at the decode size, their
    clip-clock times, and why only part of the file decoded (``None`` when all of it did)."""
    started = time.perf_counter()
    index, declared, seekable = _probe(name, path)
    pos = select_frames(index.starts, index.end, cfg.fps, cfg.num_frames)  # into index order, may repeat
    keys = index.pts[pos] if index.timed else pos.astype(np.int64)
    wanted = np.unique(keys)
    try:
        got, damage = _decode_keys(name, path, index, wanted, cfg, seek=seekable)
    except _SeekFailed as exc:
        log.debug("clip %r: %s; decoding %s sequentially", name, exc, path.name)
        got, damage = _decode_keys(name, path, index, wanted, cfg, seek=False)
    if not got:
        why = damage.describe() or index.broken or "the decoder returned no frame"
        raise DecodeError(name, f"no video frames decoded from {path} ({why})")
    # each selected key gets the frame taken for it; a lost one is left out (with num_frames, whose
    # count is fixed, it repeats the nearest frame that did decode)
    taken = np.asarray(sorted(got), dtype=np.int64)
    frames, times = [], []
    for k in keys.tolist():
        if k not in got:
            if cfg.num_frames is None:
                continue
            k = int(taken[np.argmin(np.abs(taken - k))])
        frame_key, frame = got[k]
        frames.append(frame)
        times.append(_clip_time(index, frame_key))
    partial = _partial(index, damage, declared, missing=len(wanted) - len(got))
    if partial:
        log.warning("clip %r: %s; keeping the %d frames that decoded", name, partial, len(frames))
    log.debug("clip %r: %d frames decoded from %s in %.3f s", name, len(frames), path.name,
              time.perf_counter() - started)
    return np.stack(frames), np.maximum(np.asarray(times, dtype=np.float64), 0.0), partial


def _probe(name: str, path: Path) -> tuple[VideoIndex, float | None, bool]:
    """The video stream's frame index, its declared duration (seconds) and whether seeking to its
    keyframes can be trusted (a timed stream in a container with a sample index); or :class:`DecodeError`."""
    container = _open(name, path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise DecodeError(name, f"no video track in {path} (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        declared = _declared_seconds(container, stream)
        index = index_video(container, stream)
        indexed = bool(_INDEXED_FORMATS & set(container.format.name.split(",")))
    finally:
        container.close()
    if len(index) == 0:
        why = f" ({index.broken})" if index.broken else ""
        raise DecodeError(name, f"the video track of {path} has no frames{why}")
    return index, declared, index.timed and indexed


def _open(name: str, path: Path) -> Any:
    try:
        return av.open(str(path), mode="r")
    except _AV_ERRORS as exc:
        raise DecodeError(name, f"cannot open {path}: {reason(exc)}") from exc


def _decode_keys(name: str, path: Path, index: VideoIndex, wanted: np.ndarray, cfg: VideoDecodeConfig,
                 *, seek: bool) -> tuple[dict[int, tuple[int, np.ndarray]], _Damage]:
    """Decode the frames whose keys (``pts``, or position when the stream is untimed) are ``wanted``.

    With ``seek``, a target whose keyframe lies beyond what was decoded so far is reached by seeking
    to that keyframe (the packets in between are not decoded); otherwise decoding runs on. A target
    the decoder does not return (dropped or damaged) gets the last frame shown before it, if that one
    was not taken already, else the next one. Returns ``{target key: (key of the frame taken, RGB)}``.
    """
    container = _open(name, path)
    damage = _Damage()
    out: dict[int, tuple[int, np.ndarray]] = {}
    shape = FrameShape(cfg)
    try:
        stream = container.streams.video[0]
        for s in container.streams:
            if s.index != stream.index:
                s.discard = av.stream.Discard.all
        frames: Iterator[tuple[int, Any]] | None = None
        position: int | None = None  # key of the last frame the decoder returned
        last_taken: int | None = None
        prev: tuple[int, Any] | None = None  # the last frame returned after last_taken, not taken
        pending: tuple[int, Any] | None = None  # returned past the previous target, not yet looked at
        targets = wanted.tolist()
        fresh, damaged = False, 0  # just seeked; damaged packets counted before that seek
        for t, target in enumerate(targets):
            if seek:
                key = index.keyframe_before(target)
                if (position is None and key > int(index.keyframes[0])) or (position is not None and key > position):
                    try:
                        container.seek(key, stream=stream, backward=True, any_frame=False)
                    except _AV_ERRORS as exc:
                        raise _SeekFailed(f"seek to {key} failed ({reason(exc)})") from exc
                    frames, prev, pending = _frames(container, stream, index, damage, timed=True), None, None
                    fresh, damaged = True, damage.packets
            if frames is None:
                frames = _frames(container, stream, index, damage, timed=index.timed)
            chosen: tuple[int, Any] | None = None
            while True:
                item = pending if pending is not None else next(frames, None)
                pending = None
                if item is None:  # end of the stream: the last frame before the target, if any
                    if fresh:
                        raise _SeekFailed(f"seek to {key} gave no frame")
                    chosen = prev
                    break
                k = item[0]
                position = k if position is None else max(position, k)
                if fresh and k > target and damage.packets == damaged:
                    raise _SeekFailed(f"seek to {key} gave a first frame at {k}, after target {target}")
                fresh = False
                if last_taken is not None and k <= last_taken:
                    continue
                if k < target:
                    prev = item
                    continue
                if k == target:
                    chosen = item
                    break
                pending = item  # the target was not returned: the frame showing at its time is prev
                nxt = targets[t + 1] if t + 1 < len(targets) else None
                chosen = prev if prev is not None else (item if nxt is None or k < nxt else None)
                if chosen is item:
                    pending = None
                break
            if chosen is not None:
                out[target] = (chosen[0], shape.rgb(chosen[1]))
                last_taken, prev = chosen[0], None
    finally:
        container.close()
    return out, damage


def _frames(container: Any, stream: Any, index: VideoIndex, damage: _Damage, *,
            timed: bool) -> Iterator[tuple[int, Any]]:
    """``(key, frame)`` in presentation order from the container's current position.

    A packet the decoder refuses is counted in ``damage``, and the frames after it are dropped until
    the next keyframe (they would be built on missing references). A demuxer error ends the stream.
    Key: the frame's ``pts`` when ``timed``, else its position in the stream.
    """
    dropping = False
    count = 0
    try:
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except _AV_ERRORS as exc:
                t = _clip_time(index, packet.pts) if packet.pts is not None and timed else None
                count += 1  # the refused packet's frame: later positions stay in step (untimed streams)
                damage.packets += 1
                damage.why = damage.why or reason(exc)
                if t is not None:
                    damage.first = t if damage.first is None else min(damage.first, t)
                    damage.last = t if damage.last is None else max(damage.last, t)
                damage.resumed = None
                dropping = True
                continue
            for frame in decoded:
                key = frame.pts if timed else count
                count += 1
                if key is None:
                    continue
                if dropping:
                    if not frame.key_frame:
                        damage.dropped += 1
                        continue
                    dropping = False
                    damage.resumed = _clip_time(index, key) if timed else None
                yield int(key), frame
    except _AV_ERRORS as exc:
        damage.stopped = reason(exc)


class FrameShape:
    """Converts decoded frames to upright RGB at the decode size, the first frame fixing the size."""

    def __init__(self, cfg: VideoDecodeConfig) -> None:
        self.size = cfg.face_scan_size if cfg.faces else cfg.size  # face crops: only ever shrunk
        self.shrink_only = cfg.faces
        self.coded: tuple[int, int] | None = None  # (width, height) every frame is converted to
        self.upright: Callable[[np.ndarray], np.ndarray] | None = None  # display matrix: turn and/or mirror

    def rgb(self, frame: Any) -> np.ndarray:
        """``frame`` as ``[H, W, 3]`` uint8 RGB, resized while converting, then turned upright."""
        if self.coded is None:
            size = self.size
            if self.shrink_only and size is not None and size >= min(frame.width, frame.height):
                size = None
            self.coded = target_size(frame.width, frame.height, size)
            self.upright = orientation(display_matrix(frame), frame.rotation)
        w, h = self.coded
        if (w, h) == (frame.width, frame.height):
            img = frame.to_ndarray(format="rgb24")
        else:
            img = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation=_INTERPOLATION)
        return np.ascontiguousarray(self.upright(img)) if self.upright else img


def display_matrix(frame: Any) -> np.ndarray | None:
    """The frame's display matrix (9 int32 in FFmpeg's layout), or ``None`` when it carries none."""
    for data in getattr(frame, "side_data", None) or ():
        if str(data.type).endswith("DISPLAYMATRIX"):
            matrix = np.frombuffer(bytes(data), dtype=np.int32)
            return matrix if matrix.size == 9 else None
    return None


def orientation(matrix: np.ndarray | None, rotation: float | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """How an ``[H, W, C]`` frame is shown: the turn and mirroring of its display matrix, as the
    ``ffmpeg`` command line's autorotation applies them (``None``: as coded).

    ``rotation`` is the matrix's angle as FFmpeg reads it (``av_display_rotation_get``, PyAV's
    ``frame.rotation``). A mirrored matrix (front cameras) reads as a turn too (a horizontal mirror
    as 180 degrees), so the signs of its entries decide between a turn and a mirror, as in ``ffmpeg``:
    without them the frame would come out upside down instead of mirrored.
    """
    theta = -float(rotation or 0.0) % 360.0  # clockwise degrees, as ffmpeg's get_rotation
    if matrix is not None:
        a, c, d = int(matrix[0]), int(matrix[3]), int(matrix[4])
        if abs(theta - 90) < 1:
            if c > 0:  # turned and mirrored: a transpose
                return lambda img: img.transpose(1, 0, *range(2, img.ndim))
            return lambda img: np.rot90(img, -1)
        if abs(theta - 270) < 1:
            if c < 0:
                return lambda img: np.flipud(np.rot90(img, -1))
            return lambda img: np.rot90(img, 1)
        if abs(theta - 180) < 1 or abs(theta) < 1 or abs(theta - 360) < 1:
            flip_h, flip_v = abs(theta - 180) < 1 and a < 0, d < 0
            if flip_h and flip_v:
                return lambda img: img[::-1, ::-1]
            if flip_h:
                return lambda img: img[:, ::-1]
            if flip_v:
                return lambda img: img[::-1]
            return None
    # no matrix to read (only the angle), or an angle that is not a multiple of 90 degrees
    turns = _quarter_turns(rotation)
    return (lambda img: np.rot90(img, turns)) if turns else None


def target_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side ``size`` (None: unchanged); also :func:`resize_shorter`'s size."""
    if size is None:
        return width, height
    scale = size / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns for a display-matrix rotation in degrees (counter-clockwise)."""
    if not rotation:
        return 0
    turns = int(round(float(rotation) / 90.0))
    if abs(turns * 90.0 - float(rotation)) > 1.0:
        log.warning("display rotation of %.1f degrees is not a multiple of 90; turning by %d", rotation, turns * 90)
    return turns % 4


def _clip_time(index: VideoIndex, key: int) -> float:
    """Clip-clock seconds of a frame key (a ``pts``, or a position for an untimed stream)."""
    if index.timed:
        return float(key) * index.time_base - index.zero
    return float(index.starts[min(int(key), len(index) - 1)])


def _partial(index: VideoIndex, damage: _Damage, declared: float | None, missing: int) -> str | None:
    """Why only part of the file decoded, or ``None``."""
    parts = [p for p in (damage.describe(),) if p]
    if index.broken and not damage.stopped:
        parts.append(f"video demuxing stopped after {index.end:.2f} s ({index.broken})")
    span = index.end - float(index.starts[0])
    if not parts and declared and span < _SHORT_FRACTION * declared:
        parts.append(f"decoded {span:.2f} s of video but the file declares {declared:.2f} s (truncated file?)")
    if missing and not parts:
        parts.append(f"{missing} of the sampled frames did not decode")
    return "; ".join(parts) or None


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """Duration of the video stream from the header; the container's when it is the only stream."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return None
