"""Face crops for the video stage: detect (:mod:`.face_detectors`), track one face, crop squares.

Per frame one face is kept: in the first frame with faces the most confident, largest one
(score x area); afterwards the face whose box overlaps the previously kept box most (IoU), so a
second face entering the shot does not swap identity. When no face overlaps the kept one (IoU below
``min_iou``) for ``reacquire_after`` frames in a row, the tracker re-acquires the most confident,
largest face. Each kept face is cut out as a square widened by ``margin`` and resized to
``face_size``; a frame without a kept face falls back to its centre square, so there is always one
crop per frame. Boxes and scores come back per frame for ``VideoClip.frame_extras``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from .face_detectors import FaceDetector, HaarDetector, get_detector

__all__ = ["Box", "FaceCropper", "FaceTrack", "box_iou", "center_square", "crop_square", "largest_face",
           "track_faces"]

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x, y, width, height in pixels

EXTRA_KEYS = ("face_x0", "face_y0", "face_x1", "face_y1", "face_score")


def largest_face(frame: np.ndarray, min_face: float = 0.1) -> Box | None:
    """Box of the largest frontal face (Haar cascade) in an RGB ``[H, W, 3]`` frame, or ``None``.

    ``min_face``: smallest face side searched, as a fraction of the frame's shorter side.
    """
    found = HaarDetector(min_face=min_face).detect(np.asarray(frame)[None])[0]
    if len(found) == 0:
        return None
    x0, y0, x1, y1 = found[np.argmax(_areas(found))][:4]
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``x0, y0, x1, y1`` box with each row of ``boxes`` ``[K, >=4]``: ``[K]``."""
    boxes = np.atleast_2d(np.asarray(boxes, dtype=np.float64))
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + _areas(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _acquire(found: np.ndarray) -> int:
    """Index of the face to start tracking: the highest score x area."""
    return int(np.argmax(found[:, 4] * _areas(found)))


def track_faces(detections: list[np.ndarray], min_iou: float = 0.1, reacquire_after: int = 3) -> list[int | None]:
    """Which detection to keep in each frame (an index into that frame's ``[K, 5]``, or ``None``).

    The first frame with faces starts the track on its most confident, largest face; later frames
    keep the face with the highest IoU with the last kept box when it is at least ``min_iou``.
    After ``reacquire_after`` frames in a row without such a face, the next frame with faces starts
    a new track (so a cut to another person is followed, a passing second face is not).
    """
    kept: list[int | None] = []
    last: np.ndarray | None = None
    misses = 0
    for found in detections:
        pick: int | None = None
        if len(found):
            if last is None or misses >= reacquire_after:
                pick = _acquire(found)
            else:
                ious = box_iou(last, found)
                best = int(np.argmax(ious))
                if ious[best] >= min_iou:
                    pick = best
        if pick is None:
            misses += 1
        else:
            last, misses = found[pick, :4].astype(np.float64), 0
        kept.append(pick)
    return kept


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


@dataclass
class FaceTrack:
    """The face crops of one clip and the tracked face per frame.

    ``boxes`` ``[T, 4]`` float32 are ``x0, y0, x1, y1`` as fractions of the frame's width / height
    (NaN where no face was kept); ``scores`` ``[T]`` float32 the detector's score (0 where none).
    """

    crops: np.ndarray  # [T, S, S, 3] uint8
    found: int  # frames with a kept face
    boxes: np.ndarray
    scores: np.ndarray
    detector: str  # the detector that ran

    def frame_extras(self) -> dict[str, np.ndarray]:
        """``face_x0, face_y0, face_x1, face_y1, face_score``, each ``[T]`` float32, for
        :attr:`VideoClip.frame_extras`."""
        cols = [self.boxes[:, i] for i in range(4)] + [self.scores]
        return {k: np.ascontiguousarray(c, dtype=np.float32) for k, c in zip(EXTRA_KEYS, cols)}


class FaceCropper:
    """Track one face through the frames of a clip and crop it to ``face_size`` squares.

    Args:
        face_size: side of the output crops in pixels.
        margin: fraction of the face box added on each side before cropping.
        min_face: smallest face searched, as a fraction of the frame's shorter side.
        detector: a registered detector name (``auto``, ``mtcnn``, ``haar``, ``none``) or a
            :class:`FaceDetector`.
        device: where a model-based detector runs.
        min_iou: the smallest overlap with the last kept box that continues the track.
        reacquire_after: frames without an overlapping face before the track restarts.
    """

    def __init__(self, face_size: int = 224, margin: float = 0.2, min_face: float = 0.1,
                 detector: str | FaceDetector = "auto", device: str = "cpu", min_iou: float = 0.1,
                 reacquire_after: int = 3) -> None:
        if face_size < 1:
            raise ValueError(f"face_size must be at least 1, got {face_size}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.face_size = int(face_size)
        self.margin = float(margin)
        self.min_face = float(min_face)
        self.detector = (detector if isinstance(detector, FaceDetector)
                         else get_detector(detector, min_face=min_face, device=device))
        self.min_iou = float(min_iou)
        self.reacquire_after = int(reacquire_after)

    def track(self, frames: np.ndarray) -> FaceTrack:
        """Detect, track and crop the RGB ``frames`` ``[T, H, W, 3]`` uint8."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
        t, h, w = frames.shape[:3]
        detections = self.detector.detect(frames)
        picks = track_faces(detections, self.min_iou, self.reacquire_after)
        s = self.face_size
        crops = np.empty((t, s, s, 3), dtype=np.uint8)
        boxes = np.full((t, 4), np.nan, dtype=np.float32)
        scores = np.zeros(t, dtype=np.float32)
        for i, (frame, found, pick) in enumerate(zip(frames, detections, picks)):
            if pick is None:
                crops[i] = center_square(frame, s)
                continue
            x0, y0, x1, y1, score = (float(v) for v in found[pick])
            crops[i] = crop_square(frame, (x0, y0, x1 - x0, y1 - y0), s, self.margin)
            boxes[i] = (x0 / w, y0 / h, x1 / w, y1 / h)
            scores[i] = score
        n = int(np.isfinite(boxes[:, 0]).sum())
        log.debug("%s: face kept in %d of %d frames", self.detector.name, n, t)
        return FaceTrack(crops=crops, found=n, boxes=boxes, scores=scores, detector=self.detector.name)

    def crop(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """Face crops ``[T, S, S, 3]`` uint8 of RGB ``frames`` ``[T, H, W, 3]``, and how many frames
        had a face (the others are their centre square)."""
        tr = self.track(frames)
        return tr.crops, tr.found
