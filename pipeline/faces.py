"""Face crops with OpenCV's Haar cascade (no model download: the cascade ships with opencv).

Per frame the largest frontal face is found, a square around it (widened by ``margin``) is cut out
and resized to ``face_size``. A frame without a face falls back to its centre square, resized, so
the output always has one crop per frame; the number of frames with a face is returned alongside.
The cascade is loaded once per thread (OpenCV classifiers are not safe to share across threads).
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

__all__ = ["Box", "FaceCropper", "center_square", "crop_square", "largest_face"]

log = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, width, height in pixels

_local = threading.local()


def _cascade() -> cv2.CascadeClassifier:
    """This thread's face cascade (loaded on first use)."""
    cc = getattr(_local, "cascade", None)
    if cc is None:
        path = cv2.data.haarcascades + CASCADE
        cc = cv2.CascadeClassifier(path)
        if cc.empty():
            raise RuntimeError(f"cannot load the OpenCV face cascade {path}")
        _local.cascade = cc
    return cc


def largest_face(frame: np.ndarray, min_face: float = 0.1) -> Box | None:
    """Box of the largest frontal face in an RGB ``[H, W, 3]`` frame, or ``None``.

    ``min_face``: smallest face side searched, as a fraction of the frame's shorter side.
    """
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY))
    side = max(20, int(min(gray.shape) * min_face))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
    if len(found) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in b) for b in found), key=lambda b: b[2] * b[3])
    return x, y, w, h


def crop_square(frame: np.ndarray, box: Box, size: int, margin: float = 0.2) -> np.ndarray:
    """Square crop around ``box`` resized to ``[size, size, 3]``.

    The square's side is the box's longer side widened by ``margin`` of it on each side, capped at
    the frame's shorter side; it is centred on the box and shifted inside the frame when it would
    cross an edge, so it never contains padding.
    """
    h, w = frame.shape[:2]
    x, y, bw, bh = box
    side = int(round(max(bw, bh) * (1 + 2 * margin)))
    side = max(1, min(side, h, w))
    cx, cy = x + bw / 2, y + bh / 2
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    return _resize_square(frame[y0:y0 + side, x0:x0 + side], size)


def center_square(frame: np.ndarray, size: int) -> np.ndarray:
    """The centre square of ``frame`` (side = shorter side) resized to ``[size, size, 3]``."""
    h, w = frame.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return _resize_square(frame[y0:y0 + side, x0:x0 + side], size)


def _resize_square(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


class FaceCropper:
    """Crop the largest face of each frame to a ``face_size`` square.

    Args:
        face_size: side of the output crops in pixels.
        margin: fraction of the face box added on each side before cropping.
        min_face: smallest face searched, as a fraction of the frame's shorter side.
    """

    def __init__(self, face_size: int = 224, margin: float = 0.2, min_face: float = 0.1) -> None:
        if face_size < 1:
            raise ValueError(f"face_size must be at least 1, got {face_size}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.face_size = int(face_size)
        self.margin = float(margin)
        self.min_face = float(min_face)

    def crop(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """Face crops ``[T, S, S, 3]`` uint8 of RGB ``frames`` ``[T, H, W, 3]``, and how many frames
        had a face (the others are their centre square)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
        s = self.face_size
        out = np.empty((len(frames), s, s, 3), dtype=np.uint8)
        found = 0
        for i, frame in enumerate(frames):
            box = largest_face(frame, self.min_face)
            if box is None:
                out[i] = center_square(frame, s)
            else:
                out[i] = crop_square(frame, box, s, self.margin)
                found += 1
        log.debug("face found in %d of %d frames", found, len(frames))
        return out, found
