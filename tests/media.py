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
