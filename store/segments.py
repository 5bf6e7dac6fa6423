"""Write-ahead segments: how writers commit clips without touching the shared arrays.

Each flush of a writer becomes one ``.npz`` file in the set's ``_pending/`` folder, written to a
hidden temporary name, fsynced, then renamed: the rename is the commit, so a segment is either
complete or absent. Any number of processes (dask workers) may write segments at once; one
consolidation at a time (under the set's lock) appends them to the Zarr arrays and deletes them.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# What reading a damaged segment file raises (cut short, overwritten, not a zip, missing arrays).
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
UNREADABLE_DIR = "_unreadable"  # beside _pending/: damaged segments set aside, kept for a person to look at


@dataclass
class Segment:
    """One writer flush: done clips with their vectors, and failed clips with reasons.

    Attributes:
        names: clip names, one per done clip.
        values: utterance level ``[n, D]``; frame level ``[sum(lengths), D]``.
        lengths: frame level only, frames per clip.
        times: frame level only, per-frame timestamps in seconds.
        failed: failed clip name -> reason.
        extras: per-clip numbers aligned with ``names`` (e.g. ``faces``: frames with a face found;
            ``truncated_tokens``), stored as ``clip_<key>`` arrays; NaN where not recorded.
        seg_id: file stem; sorts by creation time.
    """

    names: list[str]
    values: np.ndarray
    lengths: np.ndarray | None = None
    times: np.ndarray | None = None
    failed: dict[str, str] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    seg_id: str = ""
    _ends: np.ndarray | None = field(default=None, repr=False, compare=False)

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame-level vectors and timestamps of the segment's ``i``-th clip."""
        if self.lengths is None or self.times is None:
            raise ValueError("utterance-level segment has no frames")
        if self._ends is None:
            self._ends = np.cumsum(self.lengths)
        end = int(self._ends[i])
        start = end - int(self.lengths[i])
        return self.values[start:end], self.times[start:end]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this segment holds in memory."""
        return int(self.values.nbytes + (0 if self.times is None else self.times.nbytes))


def new_segment_id() -> str:
    """Segment id sorting by creation time: ``<ns>-<pid>-<random>``."""
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_segment(pending: Path, seg: Segment) -> str:
    """Durably write ``seg`` into the ``pending`` folder and return its id."""
    pending.mkdir(parents=True, exist_ok=True)
    seg_id = seg.seg_id or new_segment_id()
    tmp = pending / f".{seg_id}.tmp"
    arrays = {
        "names": np.asarray(seg.names, dtype=np.str_),
        "values": seg.values,
        "failed_names": np.asarray(list(seg.failed), dtype=np.str_),
        "failed_reasons": np.asarray(list(seg.failed.values()), dtype=np.str_),
    }
    for key, col in seg.extras.items():
        arrays[f"extra__{key}"] = np.asarray(col, dtype=np.float32)
    if seg.lengths is not None:
        arrays["lengths"] = np.asarray(seg.lengths, dtype=np.int64)
        arrays["times"] = np.asarray(seg.times, dtype=np.float32)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, pending / f"{seg_id}.npz")
    _fsync_dir(pending)
    return seg_id


def read_segment(path: Path) -> Segment:
    """Load one committed segment file."""
    with np.load(path, allow_pickle=False) as z:
        failed = dict(zip(z["failed_names"].tolist(), z["failed_reasons"].tolist()))
        lengths = z["lengths"] if "lengths" in z.files else None
        times = z["times"] if "times" in z.files else None
        extras = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
        return Segment(names=z["names"].tolist(), values=z["values"], lengths=lengths, times=times,
                       failed=failed, extras=extras, seg_id=path.stem)


def read_segment_names(path: Path) -> tuple[list[str], list[str]]:
    """Done and failed clip names of a segment, without loading its vectors."""
    with np.load(path, allow_pickle=False) as z:
        return z["names"].tolist(), z["failed_names"].tolist()


def set_aside(path: Path) -> Path:
    """Move an unreadable segment out of ``_pending/`` into the set's ``_unreadable/``; returns where.

    Its clips stop counting as done, so the next run redoes them; the file is kept, not deleted.
    """
    dest = path.parent.parent / UNREADABLE_DIR
    dest.mkdir(exist_ok=True)
    target = dest / path.name
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


def list_segments(pending: Path) -> list[Path]:
    """Committed segment files, oldest first."""
    if not pending.is_dir():
        return []
    return sorted(p for p in pending.glob("*.npz") if not p.name.startswith("."))


def remove_stale_temporaries(pending: Path) -> int:
    """Delete temporaries left by writers that died mid-write; returns how many were removed."""
    removed = 0
    if not pending.is_dir():
        return 0
    for tmp in pending.glob(".*.tmp"):
        try:
            pid = int(tmp.name[1:].split("-")[1])
        except (IndexError, ValueError):
            pid = -1
        if pid > 0 and _pid_alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_pending_dir_if_empty(pending: Path) -> None:
    """Drop the ``_pending`` folder once nothing is in it, so plain Zarr readers see a clean group."""
    try:
        pending.rmdir()
    except OSError:
        pass  # not empty (a writer is active) or already gone


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
