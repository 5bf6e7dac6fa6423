"""Video decoding: RGB uint8 frames sampled by timestamp, upright, optionally face-cropped.

Frames are chosen by their presentation timestamps (variable frame rates are kept), at ``fps``
frames per second or as ``num_frames`` evenly spaced frames, and the returned :class:`VideoClip`
records each chosen frame's time in seconds on the clip clock shared with the audio decoder (zero
is the file's presentation start: see :mod:`mer.pipeline.media_timing`).

Decoding uses PyAV (FFmpeg), in :mod:`mer.pipeline.video_reader`: only what the chosen frames need
is decoded (keyframe seeking when it skips work; on the real clips of ``../shared/data/video`` at 2
fps 25-45 % less CPU than decord's ``get_batch`` when keyframes are under a second apart), and only
the chosen frames are converted to RGB, at the decode size (``size`` without ``faces``), so memory
never holds full-size frames. Calls may run concurrently in a thread pool.

A display-matrix rotation (phone videos) is applied, so frames are upright (decord ignores it, and
garbles such files unless told the coded size). A damaged packet is counted and decoding resumes at
the next keyframe, so frames on both sides of a broken span are kept; a file that breaks off keeps
what came before. Either way ``VideoClip.partial`` says what happened (and a warning is logged).
Missing, empty or unreadable files, no video track and a track without frames raise
:class:`DecodeError` naming the clip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mer.extractors.base import VideoClip

from .decode_errors import DecodeError, check_file
from .video_reader import read_frames, select_frames, target_size

__all__ = ["VideoDecodeConfig", "DecodeError", "decode_video", "resize_shorter", "select_frames"]


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
    face_detector: str = "auto"  # mtcnn, haar, none, or auto (mtcnn when facenet-pytorch imports, else haar;
    # resolved when the config is made, with faces)
    face_margin: float = 0.2  # fraction of the face box added on each side of the crop
    require_face: bool = False  # a clip where no frame has a face fails (needs faces)
    face_scan_size: int | None = 720  # with faces: frames whose shorter side is larger are shrunk to
    # it while decoding, before detection and cropping (bounds memory on 4K; None: full size)
    face_device: str = "cpu"  # where a model-based face detector (mtcnn) runs: cpu, cuda, cuda:1 (a speed
    # setting, not recorded in provenance)

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
        if self.faces and self.face_detector == "auto":
            from .face_detectors import resolve_detector

            # resolved where the settings are made, once: a dask worker then runs the detector the
            # provenance records (or fails saying how to install it), never another fallback
            self.face_detector = resolve_detector("auto")
        if not self.face_margin >= 0:
            raise ValueError(f"face_margin must be >= 0, got {self.face_margin}")
        if self.require_face and not self.faces:
            raise ValueError("require_face needs faces=True (--faces)")
        if self.face_scan_size is not None and int(self.face_scan_size) < int(self.face_size):
            raise ValueError(f"face_scan_size ({self.face_scan_size}) must be at least face_size ({self.face_size})")

    def record(self) -> dict[str, Any]:
        """The decode settings as a JSON-able dict, for provenance (``fps`` is ``None`` when
        ``num_frames`` decides, so two configs that decode the same frames record the same)."""
        d = dataclasses.asdict(self)
        d.pop("face_device")  # where the detector ran changes speed, not what the features mean
        if self.num_frames is not None:
            d["fps"] = None
        if not self.faces:  # the face settings change nothing without face crops
            for k in ("face_detector", "face_margin", "require_face", "face_scan_size"):
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
        ``S = cfg.face_size`` when ``cfg.faces``), upright (display rotation applied), ``times``
        ``[T]`` float32 seconds on the clip clock (the presentation timestamps; the audio decoder's
        ``AudioClip.offset`` is on the same clock), increasing, ``faces`` (frames where a face was
        found; ``None`` without face crop), and ``partial`` (what was damaged or missing, or ``None``).

    Raises:
        DecodeError: the file is missing, empty, not decodable, has no video track, the track has no
            frames, or none of them decodes.
    """
    cfg = cfg or VideoDecodeConfig()
    path = check_file(name, path)
    frames, times, partial = read_frames(name, path, cfg)

    faces: int | None = None
    extras: dict[str, np.ndarray] = {}
    if cfg.faces:
        from .faces import FaceCropper

        track = FaceCropper(face_size=cfg.face_size, margin=cfg.face_margin, detector=cfg.face_detector,
                            device=cfg.face_device).track(frames)
        if cfg.require_face and track.found == 0:
            raise DecodeError(name, f"no face found in any of the {len(frames)} frames of {path.name} "
                                    f"({track.detector} detector; --require-face)")
        frames, faces, extras = track.crops, track.found, track.frame_extras()
    # without faces, `size` was applied while converting (FrameShape): the frames are at it already
    return VideoClip(name=name, frames=np.ascontiguousarray(frames, dtype=np.uint8),
                     times=np.asarray(times, dtype=np.float32), faces=faces, partial=partial,
                     frame_extras=extras)


def resize_shorter(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``[H, W, 3]`` image so its shorter side is ``size`` pixels, keeping the aspect."""
    h, w = frame.shape[:2]
    if min(h, w) == size:
        return frame
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(frame, target_size(w, h, size), interpolation=interp)
