"""Face detectors for the video stage: a small registry of ``name -> FaceDetector`` classes.

Every detector takes a batch of RGB uint8 frames ``[T, H, W, 3]`` and returns, per frame, an array
``[K, 5]`` float32 of the faces it found: ``x0, y0, x1, y1`` in pixels (clipped to the frame) and a
score in ``[0, 1]``. Detectors:

* ``mtcnn``: facenet-pytorch's MTCNN (its weights ship inside the wheel; nothing is downloaded).
  The score is MTCNN's face probability. Install with ``pip install --no-deps facenet-pytorch``
  (it needs ``requests`` importable, a core dependency of mer).
* ``haar``: OpenCV's frontal-face Haar cascade (ships with opencv). The cascade gives no calibrated
  confidence, so every face it reports has score 1.0.
* ``none``: finds nothing (the cropper then takes the centre square of every frame).

``auto`` resolves to ``mtcnn`` when facenet_pytorch imports, else ``haar`` (:func:`resolve_detector`).
Models are loaded once per thread and device and reused (:func:`get_detector`).
"""

from __future__ import annotations

import functools
import logging
import threading
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

__all__ = ["DETECTORS", "FaceDetector", "HaarDetector", "MtcnnDetector", "NoDetector", "detector_choices",
           "get_detector", "mtcnn_available", "resolve_detector"]

log = logging.getLogger(__name__)

MTCNN_INSTALL = "pip install --no-deps 'facenet-pytorch==2.6.0' (it also needs requests)"
EMPTY = np.zeros((0, 5), np.float32)

DETECTORS: dict[str, type[FaceDetector]] = {}


def _register(cls: type[FaceDetector]) -> type[FaceDetector]:
    DETECTORS[cls.name] = cls
    return cls


def detector_choices() -> list[str]:
    """Names accepted as a detector setting: ``auto`` and every registered detector."""
    return ["auto", *DETECTORS]


class FaceDetector(ABC):
    """Base class: find faces in a batch of frames.

    Args:
        min_face: smallest face searched, as a fraction of the frame's shorter side.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``); detectors without a model ignore it.
    """

    name: ClassVar[str] = ""

    def __init__(self, min_face: float = 0.1, device: str = "cpu") -> None:
        if not 0 <= min_face < 1:
            raise ValueError(f"min_face must be in [0, 1), got {min_face}")
        self.min_face = float(min_face)
        self.device = device

    def min_side(self, frames: np.ndarray) -> int:
        """Smallest face side searched in ``frames``, in pixels (at least 20)."""
        return max(20, int(min(frames.shape[1:3]) * self.min_face))

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Faces in each RGB uint8 frame of ``frames`` ``[T, H, W, 3]``: per frame ``[K, 5]`` float32
        (x0, y0, x1, y1 in pixels inside the frame, score in [0, 1])."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
        if len(frames) == 0:
            return []
        out = self._detect(np.ascontiguousarray(frames, dtype=np.uint8))
        h, w = frames.shape[1:3]
        return [_clip_boxes(b, w, h) for b in out]

    @abstractmethod
    def _detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Per frame ``[K, 5]`` boxes and scores (any float dtype; clipped by :meth:`detect`)."""


def _clip_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """Boxes clipped to the frame, without empty ones, as float32 ``[K, 5]``."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 5).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
    b[:, 4] = np.clip(b[:, 4], 0, 1)
    keep = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)
    return b[keep]


@_register
class NoDetector(FaceDetector):
    """Finds no face: every frame becomes its centre square."""

    name = "none"

    def _detect(self, frames: np.ndarray) -> list[np.ndarray]:
        return [EMPTY] * len(frames)


@_register
class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade on the equalised grey frame; score 1.0 for every face
    (the cascade has no calibrated confidence)."""

    name = "haar"
    CASCADE = "haarcascade_frontalface_default.xml"

    def _detect(self, frames: np.ndarray) -> list[np.ndarray]:
        import cv2

        cascade = _haar_cascade()
        side = self.min_side(frames)
        out = []
        for frame in frames:
            gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
            if len(found) == 0:
                out.append(EMPTY)
                continue
            xywh = np.asarray(found, dtype=np.float32).reshape(-1, 4)
            out.append(np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2], xywh[:, 1] + xywh[:, 3],
                                        np.ones(len(xywh), np.float32)]))
        return out


@_register
class MtcnnDetector(FaceDetector):
    """facenet-pytorch's MTCNN (``keep_all=True``), run on batches of frames.

    Args:
        min_score: faces with a lower MTCNN probability are dropped (MTCNN's own last-stage
            threshold is 0.7; 0.9 removes most of its false positives on real footage).
        batch_size: frames per MTCNN call (bounds the memory of the image pyramid).
    """

    name = "mtcnn"

    def __init__(self, min_face: float = 0.1, device: str = "cpu", min_score: float = 0.9,
                 batch_size: int = 16) -> None:
        super().__init__(min_face, device)
        self.min_score = float(min_score)
        self.batch_size = max(1, int(batch_size))
        _import_mtcnn()  # a clear error now rather than at the first frame

    def _detect(self, frames: np.ndarray) -> list[np.ndarray]:
        model = _mtcnn_model(self.device, self.min_side(frames))
        out: list[np.ndarray] = []
        for i in range(0, len(frames), self.batch_size):
            boxes, probs = model.detect(frames[i:i + self.batch_size])
            for b, p in zip(boxes, probs):
                if b is None:
                    out.append(EMPTY)
                    continue
                found = np.column_stack([np.asarray(b, np.float32).reshape(-1, 4),
                                         np.asarray(p, np.float32).reshape(-1)])
                out.append(found[found[:, 4] >= self.min_score])
        return out


# ---- loading, once per thread -------------------------------------------------------------------
_local = threading.local()


def _haar_cascade():  # -> cv2.CascadeClassifier
    """This thread's face cascade (OpenCV classifiers are not safe to share across threads)."""
    import cv2

    cc = getattr(_local, "cascade", None)
    if cc is None:
        path = cv2.data.haarcascades + HaarDetector.CASCADE
        cc = cv2.CascadeClassifier(path)
        if cc.empty():
            raise RuntimeError(f"cannot load the OpenCV face cascade {path}")
        _local.cascade = cc
    return cc


def _import_mtcnn():  # -> the facenet_pytorch.MTCNN class
    try:
        from facenet_pytorch import MTCNN
    except ImportError as exc:
        raise ImportError(f"face detector 'mtcnn' needs facenet-pytorch, which is not importable ({exc}); "
                          f"install it with: {MTCNN_INSTALL}, or choose --face-detector haar") from exc
    return MTCNN


def _mtcnn_model(device: str, min_side: int):  # -> facenet_pytorch.MTCNN
    """This thread's MTCNN for ``device``; the smallest face searched is set per call (it is a
    plain attribute of the model, read by each ``detect``)."""
    models = getattr(_local, "mtcnn", None)
    if models is None:
        models = _local.mtcnn = {}
    model = models.get(device)
    if model is None:
        model = _import_mtcnn()(keep_all=True, device=device, select_largest=False)
        model.eval()
        models[device] = model
        log.debug("loaded MTCNN on %s (thread %s)", device, threading.current_thread().name)
    model.min_face_size = min_side
    return model


@functools.lru_cache(maxsize=None)
def mtcnn_available() -> bool:
    """Whether facenet_pytorch's MTCNN imports in this process."""
    try:
        _import_mtcnn()
    except ImportError as exc:
        log.debug("facenet_pytorch not importable: %s", exc)
        return False
    return True


def resolve_detector(name: str) -> str:
    """The registered detector that ``name`` means: ``auto`` -> ``mtcnn`` when facenet_pytorch
    imports, else ``haar`` (logged); any other name must be registered."""
    if name == "auto":
        chosen = "mtcnn" if mtcnn_available() else "haar"
        _log_auto(chosen)
        return chosen
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(detector_choices())}")
    return name


@functools.lru_cache(maxsize=None)
def _log_auto(chosen: str) -> None:
    if chosen == "mtcnn":
        log.info("face detector auto: mtcnn (facenet-pytorch)")
    else:
        log.warning("face detector auto: haar (facenet-pytorch is not installed; for MTCNN: %s)", MTCNN_INSTALL)


def get_detector(name: str = "auto", min_face: float = 0.1, device: str = "cpu") -> FaceDetector:
    """A detector by name (``auto`` resolved by :func:`resolve_detector`). Construction is cheap:
    the models behind it are loaded once per thread and shared by every instance.

    Raises:
        ValueError: unknown name.
        ImportError: ``mtcnn`` asked for but facenet-pytorch is not installed (says how to install it).
    """
    return DETECTORS[resolve_detector(name)](min_face=min_face, device=device)
