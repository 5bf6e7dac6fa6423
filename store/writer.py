"""Buffered writer: validates each clip, commits batches as write-ahead segments.

Clips are buffered in memory and committed every ``flush_rows`` clips or ``flush_seconds``
seconds, whichever comes first, so an interrupted run loses at most that much work. Closing the
writer (or leaving its ``with`` block, also on Ctrl-C) commits the buffer and consolidates.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from . import frame_extras as fx
from .errors import ClipValueError, StoreWriteError
from .segments import Segment

if TYPE_CHECKING:
    from .featureset import FeatureSet

log = logging.getLogger(__name__)


class FeatureSetWriter:
    """Adds clips to one feature set.

    Args:
        fs: the target set.
        flush_rows: commit a segment after this many buffered clips.
        flush_seconds: commit a segment when the oldest buffered clip is this old.
        consolidate_every: merge segments into the arrays after this many commits (0: only on close).
    """

    def __init__(self, fs: FeatureSet, *, flush_rows: int = 256, flush_seconds: float = 60.0,
                 consolidate_every: int = 32) -> None:
        meta = fs.meta()
        self.fs = fs
        self.level: str = meta["level"]
        self.dim: int = int(meta["dim"])
        self.dtype = np.dtype(meta["dtype"])
        self.flush_rows = max(1, flush_rows)
        self.flush_seconds = flush_seconds
        self.consolidate_every = consolidate_every
        self._names: list[str] = []
        self._values: list[np.ndarray] = []
        self._times: list[np.ndarray] = []
        self._extras: list[dict[str, float]] = []
        self._frame_extras: list[dict[str, np.ndarray]] = []
        self._failed: dict[str, str] = {}
        self._since: float | None = None
        self._commits = 0
        self.n_written = 0
        self.n_failed = 0
        self.closed = False

    # ---- adding ---------------------------------------------------------------------------
    def add(self, name: str, values: np.ndarray, times: np.ndarray | None = None,
            extras: dict[str, float] | None = None,
            frame_extras: dict[str, np.ndarray] | None = None) -> None:
        """Buffer one clip's vectors (``[D]`` utterance level, ``[T, D]`` frame level).

        ``extras`` are per-clip numbers kept beside the vectors (e.g. ``{"faces": 7}``).
        ``frame_extras`` are numbers per decoded frame (e.g. ``{"face_score": [T] array}``), all of
        one length (at frame level the clip's ``T``); they are kept whatever the set's level (see
        :mod:`mer.store.frame_extras`) and read back with :meth:`FeatureSet.read_frame_extra`.

        Raises :class:`ClipValueError` naming the clip when the shape is wrong, a value is
        NaN/Inf, or frame extras differ in length (NaN is allowed there: "not found"); nothing
        is buffered then, so the caller can record the failure and go on.
        """
        arr = self._validate(name, values)
        per_frame = fx.validate(self.fs.key, str(name), frame_extras,
                                len(arr) if self.level == "frame" else None)
        if self.level == "frame":
            t = np.full(len(arr), np.nan, np.float32) if times is None else np.asarray(times, np.float32)
            if t.shape != (len(arr),):
                raise ClipValueError(self.fs.key, name, f"{len(arr)} frames but {t.shape} timestamps")
            self._times.append(t)
        self._names.append(str(name))
        self._values.append(arr)
        self._extras.append(dict(extras or {}))
        self._frame_extras.append(per_frame)
        self._failed.pop(str(name), None)
        self._tick()

    def add_batch(self, names: list[str], values: np.ndarray | list[np.ndarray],
                  times: list[np.ndarray] | None = None) -> None:
        """Buffer several clips; equivalent to :meth:`add` per clip."""
        for i, name in enumerate(names):
            self.add(name, values[i], None if times is None else times[i])

    def fail(self, name: str, reason: str) -> None:
        """Record that ``name`` failed, with a reason a person can act on."""
        self._failed[str(name)] = str(reason)
        self.n_failed += 1
        log.warning("%s: clip %s failed: %s", self.fs.key, name, reason)
        self._tick()

    def _validate(self, name: str, values: np.ndarray) -> np.ndarray:
        arr = np.asarray(values)
        want = "[D]" if self.level == "utt" else "[T, D]"
        if self.level == "utt" and arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        ok = arr.ndim == (1 if self.level == "utt" else 2) and arr.shape[-1] == self.dim
        if not ok:
            raise ClipValueError(self.fs.key, name, f"expected shape {want} with D={self.dim}, got {arr.shape}")
        if self.level == "frame" and arr.shape[0] == 0:
            raise ClipValueError(self.fs.key, name, "no frames")
        if not np.issubdtype(arr.dtype, np.number):
            raise ClipValueError(self.fs.key, name, f"non-numeric dtype {arr.dtype}")
        finite = np.isfinite(arr)
        if not finite.all():
            raise ClipValueError(self.fs.key, name, f"{int((~finite).sum())} of {arr.size} values are NaN/Inf; "
                                 "not stored")
        with np.errstate(over="ignore"):
            stored = arr.astype(self.dtype)
        if not np.isfinite(stored).all():
            raise ClipValueError(self.fs.key, name, f"values overflow {self.dtype} (max |x| = {np.abs(arr).max():.3g}); "
                                 "not stored (store float32: --store-dtype float32)")
        return stored

    def _tick(self) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if len(self._names) + len(self._failed) >= self.flush_rows or now - self._since >= self.flush_seconds:
            self.flush()

    # ---- committing -----------------------------------------------------------------------
    def flush(self) -> None:
        """Commit the buffer as one segment (no-op when empty)."""
        if not self._names and not self._failed:
            return
        if self.level == "utt":
            values = np.stack(self._values) if self._values else np.zeros((0, self.dim), self.dtype)
            seg = Segment(names=self._names, values=values, failed=self._failed)
        else:
            values = np.concatenate(self._values) if self._values else np.zeros((0, self.dim), self.dtype)
            lengths = np.array([len(v) for v in self._values], dtype=np.int64)
            times = np.concatenate(self._times) if self._times else np.zeros(0, np.float32)
            seg = Segment(names=self._names, values=values, lengths=lengths, times=times, failed=self._failed)
        keys = sorted({k for e in self._extras for k in e})
        seg.extras = {k: np.array([e.get(k, np.nan) for e in self._extras], dtype=np.float32) for k in keys}
        seg.frame_extras, seg.frame_extra_lengths = fx.pack(self._frame_extras)
        try:
            self.fs.write_segment(seg)
        except OSError as exc:
            raise StoreWriteError(self.fs.key, self.fs.root, exc,
                                  f"{len(self._names) + len(self._failed)} clips buffered since the last commit are "
                                  f"not saved (a rerun redoes them); {self.n_written} clips this writer committed "
                                  "earlier are kept") from exc
        self.n_written += len(self._names)
        self._names, self._values, self._times, self._extras, self._frame_extras = [], [], [], [], []
        self._failed = {}
        self._since = None
        self._commits += 1
        if self.consolidate_every and self._commits % self.consolidate_every == 0:
            self.fs.consolidate()

    def close(self) -> None:
        """Commit what is buffered and merge all segments into the arrays."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        self.fs.consolidate()

    def __enter__(self) -> FeatureSetWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Buffered clips were validated one by one, so they are safe to keep even when the
        # block ends with an error or Ctrl-C.
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # keep the original error; this one is secondary
            log.exception("%s: could not commit buffered clips while handling %s", self.fs.key, exc_type.__name__)
