"""The clip clock, and where each video frame sits on it (read from the container, no decoding).

**Clip clock.** Every time the decoders return (video frame ``times``, ``AudioClip.offset``) is in
seconds on one clock per media file, whose zero is the file's *presentation start*: the earliest
``start_time`` over its audio and video streams. That is FFmpeg's own container start, except that
data and subtitle tracks (timecodes, chapters) are left out so they cannot move it. In a file whose
video starts at 0.3 s and audio at 0 s, frame times start at 0.3 and the audio offset is 0; audio
that starts 1.0 s after the video has offset 1.0 and its frame-level features times from 1.0. An
audio-only or video-only file starts at 0.

Timestamps are the frames' real presentation timestamps (variable frame rate is kept), read from
the demuxed packets: a packet's ``pts`` is the ``pts`` of the frame it decodes to. decord's
``get_frame_timestamp`` gives the same values on the real clips of ``../shared/data/video`` (within
1 µs) but counts from the *video stream's* own start, so a late video stream would be shifted to 0;
this module does not use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from .decode_errors import reason

__all__ = ["VideoIndex", "clip_zero", "index_video", "stream_start"]

_AV_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, ValueError, EOFError)


def stream_start(stream: Any) -> float | None:
    """The stream's presentation start in seconds (its own time base), or ``None`` when unknown."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return float(stream.start_time * stream.time_base)


def clip_zero(container: Any) -> float:
    """Zero of the clip clock in the container's own seconds: the earliest start of its audio and
    video streams; the container's start when no such stream declares one; else 0."""
    starts = [s for s in (stream_start(st) for st in container.streams if st.type in ("audio", "video"))
              if s is not None]
    if starts:
        return min(starts)
    if container.start_time is not None:
        return container.start_time / av.time_base
    return 0.0


@dataclass
class VideoIndex:
    """Every frame of a video stream as the demuxer lists it, in presentation order.

    Attributes:
        pts: ``[N]`` int64 presentation timestamps (stream time base), increasing.
        keyframes: int64 presentation timestamps of the keyframes (where decoding can start), increasing.
        ends: ``[N]`` float64 end of each frame on the clip clock (start plus duration).
        time_base: seconds per ``pts`` unit.
        zero: the clip clock's zero in the container's seconds (:func:`clip_zero`).
        timed: every packet had a timestamp (seeking and matching frames by ``pts`` are safe).
        broken: why demuxing stopped before the end of the file, or ``None``.
    """

    pts: np.ndarray
    keyframes: np.ndarray
    ends: np.ndarray
    time_base: float
    zero: float
    timed: bool
    broken: str | None = None

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def starts(self) -> np.ndarray:
        """``[N]`` frame start times in seconds on the clip clock."""
        return self.pts * self.time_base - self.zero

    @property
    def end(self) -> float:
        """End of the last frame on the clip clock (0 for an empty index)."""
        return float(self.ends.max()) if len(self.ends) else 0.0

    def keyframe_before(self, pts: int) -> int:
        """The last keyframe at or before ``pts`` (the first keyframe when none is)."""
        i = int(np.searchsorted(self.keyframes, pts, side="right")) - 1
        return int(self.keyframes[max(i, 0)])


def index_video(container: Any, stream: Any) -> VideoIndex:
    """Demux ``stream`` (reading packets, decoding nothing) into a :class:`VideoIndex`.

    Packets the demuxer marks as discarded (outside an edit list) and empty ones are left out.
    When a packet has no ``pts``, ``timed`` is ``False`` (frames are then matched by position, not by
    timestamp, and never reached by seeking) and the packet takes its ``dts``, or else its position
    at the stream's average rate. A demuxer error ends the index there (``broken``). Other
    streams are skipped while demuxing; the container is left at its end (decode from a fresh one).
    """
    tb = float(stream.time_base) if stream.time_base is not None else 1.0 / 90000
    rate = float(stream.average_rate or stream.guessed_rate or 25.0)
    others = [s for s in container.streams if s.index != stream.index]
    saved = [s.discard for s in others]
    for s in others:
        s.discard = av.stream.Discard.all
    pts: list[int] = []
    keys: list[int] = []
    durs: list[float] = []
    timed = True
    broken: str | None = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            t = packet.pts
            if t is None:  # no presentation time: frames are matched by position, at the average rate
                timed = False
                t = packet.dts if packet.dts is not None else int(round(len(pts) / rate / tb))
            pts.append(int(t))
            if packet.is_keyframe:
                keys.append(int(t))
            durs.append(float(packet.duration * tb) if packet.duration else 0.0)
    except _AV_ERRORS as exc:
        broken = reason(exc)
    finally:
        for s, d in zip(others, saved):
            s.discard = d
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    p = np.asarray(pts, dtype=np.int64)[order]
    d = np.asarray(durs, dtype=np.float64)[order]
    if len(p) and np.any(np.diff(p) == 0):  # duplicate timestamps cannot be told apart by pts
        timed = False
    zero = clip_zero(container)
    starts = p * tb - zero
    # a frame lasts until the next one starts; the last one for its packet duration (or one average
    # frame), but not past the end the track declares
    nxt = np.append(starts[1:], starts[-1] + (d[-1] if len(d) and d[-1] > 0 else 1.0 / rate)) if len(p) else starts
    if len(p) and stream.duration and stream.start_time is not None:  # the track's declared end caps the last frame
        declared_end = float((stream.start_time + stream.duration) * stream.time_base) - zero
        if declared_end > starts[-1]:
            nxt[-1] = min(nxt[-1], declared_end)
    keyframes = np.unique(np.asarray(keys, dtype=np.int64)) if keys else p[:1]
    return VideoIndex(pts=p, keyframes=keyframes, ends=np.maximum(nxt, starts), time_base=tb, zero=zero,
                      timed=timed, broken=broken)
