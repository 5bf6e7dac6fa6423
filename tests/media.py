"""Synthetic media for tests: short clips written with PyAV (video and/or a sine audio track)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

W, H, FPS, SECONDS, TONE = 64, 48, 25, 3, 440.0


# ---- synthetic media ----------------------------------------------------------------------
def _video_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _frame_image(i: int) -> np.ndarray:
    """Frame i: red level encodes the index, a bright bar moves right."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = min(255, i * 3)
    img[:, : i % W, 1] = 200
    return img


def write_av(path: Path, audio: bool = True, video: bool = True, faststart: bool = False,
             audio_rate: int = 44100, channels: int = 2) -> Path:
    """Write a 3 s clip: 64x48 at 25 fps and/or a 0.5-amplitude 440 Hz sine."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        vs = None
        if video:
            vs = c.add_stream(_video_codec(), rate=FPS)
            vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        codec = "aac" if path.suffix in (".mp4", ".m4a") else ("flac" if path.suffix == ".flac" else "pcm_s16le")
        if audio:
            layout = "stereo" if channels == 2 else "mono"
            as_ = c.add_stream(codec, rate=audio_rate)
            as_.layout = layout
            t = np.arange(SECONDS * audio_rate) / audio_rate
            s = (0.5 * np.sin(2 * np.pi * TONE * t)).astype(np.float32)
            data = np.stack([s] * channels)
            fmt = as_.codec_context.format.name if codec != "aac" else "fltp"
        if vs is not None:
            for i in range(FPS * SECONDS):
                for p in vs.encode(av.VideoFrame.from_ndarray(_frame_image(i), format="rgb24")):
                    c.mux(p)
            for p in vs.encode():
                c.mux(p)
        if audio:
            step = 1024
            for k in range(0, data.shape[1], step):
                chunk = np.ascontiguousarray(data[:, k:k + step])
                fr = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                fr.sample_rate, fr.pts = audio_rate, k
                if fmt != "fltp":
                    fr = av.AudioResampler(format=fmt, layout=layout, rate=audio_rate).resample(fr)[0]
                    fr.pts = k
                for p in as_.encode(fr):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path


# ---- timed, rotated, large, empty and damaged clips (tests/test_decode_video_real.py) ----------
def timed_image(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame i of :func:`write_timed`: red level ``2 * i`` (up to 254), a blue block in the top-left
    quarter (where "up" is after rotating), a green bar growing from the left."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = min(254, 2 * i)
    img[: h // 4, : w // 4, 2] = 255
    img[h // 2:, : (i * 4) % w, 1] = 200
    return img


def write_timed(path: Path, frame_times: np.ndarray | None = None, *, seconds: float = SECONDS, fps: int = FPS,
                size: tuple[int, int] = (W, H), audio_start: float | None = None, audio_codec: str | None = None,
                rotation: int = 0, gop: int | None = None, preset: str | None = None,
                display_matrix: list[int] | None = None) -> Path:
    """Write H.264 video whose frames sit at ``frame_times`` seconds (default ``i / fps`` for
    ``seconds``; any increasing times, e.g. a variable frame rate or a late start), with frames
    :func:`timed_image`, and optionally a mono 0.5-amplitude 440 Hz tone of ``seconds`` whose first
    sample is at ``audio_start`` seconds.

    ``size``: (width, height) as coded. ``rotation``: display-matrix rotation in degrees
    counter-clockwise (a phone video: the frames are stored sideways). ``display_matrix``: the 9
    int32 of FFmpeg's display matrix instead (mirrored ones, from front cameras). ``gop``: keyframe interval in
    frames. ``preset``: x264 preset (``ultrafast`` for large frames). ``audio_codec``: default AAC
    (whose encoder delay puts its first packet 1024 samples before ``audio_start``), or e.g.
    ``pcm_s16le`` in a ``.mov``.
    """
    from fractions import Fraction

    times = np.arange(int(round(seconds * fps))) / fps if frame_times is None else np.asarray(frame_times, float)
    ms = Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        options = {k: v for k, v in (("g", gop and str(gop)), ("preset", preset)) if v}
        vs = c.add_stream(_video_codec(), rate=fps, options=options)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.codec_context.time_base = ms
        if rotation:
            vs.set_display_rotation(rotation)
        if display_matrix is not None:
            vs.set_display_matrix(display_matrix)
        a_s = None
        if audio_start is not None:
            rate = 16000
            a_s = c.add_stream(audio_codec or "aac", rate=rate)
            a_s.layout = "mono"
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(timed_image(i, *size), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), ms
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a_s is not None:
            n = int(seconds * rate)
            tone = (0.5 * np.sin(2 * np.pi * TONE * np.arange(n) / rate)).astype(np.float32)
            first = int(round(audio_start * rate))
            fmt = "fltp" if a_s.codec_context.name == "aac" else a_s.codec_context.format.name
            step = 1024
            for k in range(0, n, step):
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, k:k + step]), format="fltp",
                                                layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = rate, first + k, Fraction(1, rate)
                if fmt != "fltp":
                    fr = av.AudioResampler(format=fmt, layout="mono", rate=rate).resample(fr)[0]
                    fr.pts, fr.time_base = first + k, Fraction(1, rate)
                for p in a_s.encode(fr):
                    c.mux(p)
            for p in a_s.encode():
                c.mux(p)
    return path


def write_video_without_frames(path: Path) -> Path:
    """An AVI whose video stream (MPEG-4, 64x48) has no packets at all (an MP4 muxer would drop the
    empty track altogether)."""
    with av.open(str(path), "w", format="avi") as c:
        vs = c.add_stream("mpeg4", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        c.start_encoding()
    return path


def mp4_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Top-level MP4 boxes: type -> (payload start, end) byte offsets (the last box of each type)."""
    boxes, pos = {}, 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        head = 8
        if size == 1:
            size, head = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        boxes[kind] = (pos + head, pos + size)
        pos += size
    return boxes


def corrupt_middle(src: Path, dst: Path, start: float = 0.4, end: float = 0.55, seed: int = 1) -> tuple[int, int]:
    """Copy MP4 ``src`` to ``dst`` with the span ``[start, end)`` (fractions) of its media data (the
    ``mdat`` payload) overwritten by random bytes; the index (``moov``) stays intact. Returns the
    byte span overwritten."""
    data = bytearray(Path(src).read_bytes())
    lo, hi = mp4_boxes(bytes(data))["mdat"]
    a, b = lo + int((hi - lo) * start), lo + int((hi - lo) * end)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return a, b
