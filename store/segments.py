"""Write-ahead segments: how writers commit clips without touching the shared arrays.

Each flush of a writer becomes one ``.npz`` file in the set's ``_pending/`` folder, written to a
hidden temporary name, fsynced, then renamed: the rename is the commit, so a segment is either
complete or absent. Any number of processes (dask workers) may write segments at once; one
consolidation at a time (under the set's lock) appends them to the Zarr arrays and deletes them.

Every segment records the *generation* of the set it was written for (a random id the set gets
when it is created; ``""`` for sets and segments written before generations existed). A set deleted
and made anew (``--force``) has a new generation, so a segment an old writer leaves in it is
recognised: it is never merged and its clips never count as done.

Segment ids are ``<ns>-<host>-<pid>-<random>`` (``<ns>`` zero-padded, so ids sort by creation time;
``<host>`` the writer's host name with every character but ``[A-Za-z0-9.-]`` replaced by ``-``).
A temporary ``.<id>.tmp`` is left by a writer that died mid-write: a consolidation removes it when
the writer ran on this host and its pid is dead, or, whatever host it came from, when it is older
than :data:`STALE_TEMP_AGE_S` (another host's pid means nothing here). Ids of the old format
``<ns>-<pid>-<random>`` (no host) are judged by their pid alone, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import time
from collections.abc import Callable
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# What reading a damaged segment file raises (cut short, overwritten, not a zip, missing arrays).
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
UNREADABLE_DIR = "_unreadable"  # beside _pending/: damaged segments set aside, kept for a person to look at
LEGACY_GENERATION = ""  # generation of sets and segments written before generations existed
# A temporary older than this is removed whatever host wrote it (no write takes a day; a writer on
# another host cannot be asked whether it is alive).
STALE_TEMP_AGE_S = 24 * 3600
WRITE_TRIES = 5  # attempts of one segment write whose temporary is removed before its rename
CREATE_DEADLINE_S = 30.0  # how long creating a temporary retries a consolidator removing the empty _pending/


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
        frame_extras: numbers per decoded frame (e.g. ``face_x0``), each the clips' frames
            concatenated (``sum(frame_extra_lengths)``), NaN where a clip lacks the key; stored in
            the set's ``frame_extras/`` group (see :mod:`.frame_extras`).
        frame_extra_lengths: frames of frame extras per clip (0: none); ``None`` when no clip has any.
        seg_id: file stem; sorts by creation time.
        generation: generation of the set the segment was written for (``""``: legacy).
    """

    names: list[str]
    values: np.ndarray
    lengths: np.ndarray | None = None
    times: np.ndarray | None = None
    failed: dict[str, str] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    frame_extras: dict[str, np.ndarray] = field(default_factory=dict)
    frame_extra_lengths: np.ndarray | None = None
    seg_id: str = ""
    generation: str = LEGACY_GENERATION
    _ends: np.ndarray | None = field(default=None, repr=False, compare=False)
    _fx_ends: np.ndarray | None = field(default=None, repr=False, compare=False)

    def frames(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame-level vectors and timestamps of the segment's ``i``-th clip."""
        if self.lengths is None or self.times is None:
            raise ValueError("utterance-level segment has no frames")
        if self._ends is None:
            self._ends = np.cumsum(self.lengths)
        end = int(self._ends[i])
        start = end - int(self.lengths[i])
        return self.values[start:end], self.times[start:end]

    def frame_extra_span(self, i: int) -> tuple[int, int]:
        """``[start, end)`` of the ``i``-th clip's frames in the :attr:`frame_extras` columns."""
        if self.frame_extra_lengths is None:
            return 0, 0
        if self._fx_ends is None:
            self._fx_ends = np.cumsum(self.frame_extra_lengths)
        end = int(self._fx_ends[i])
        return end - int(self.frame_extra_lengths[i]), end

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this segment holds in memory."""
        return int(self.values.nbytes + (0 if self.times is None else self.times.nbytes)
                   + sum(col.nbytes for col in self.frame_extras.values()))


def host_name() -> str:
    """This machine's name as segment ids carry it: ``[A-Za-z0-9.-]`` only, never empty."""
    return re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "unknown-host"


def new_segment_id() -> str:
    """Segment id sorting by creation time: ``<ns>-<host>-<pid>-<random>``."""
    return f"{time.time_ns():020d}-{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def parse_segment_id(seg_id: str) -> tuple[int, str | None, int]:
    """``(ns, host, pid)`` of a segment id; ``host`` is ``None`` for the old ``<ns>-<pid>-<random>``.

    Raises ``ValueError`` for a string that is neither.
    """
    parts = seg_id.split("-")
    if len(parts) < 3:
        raise ValueError(f"not a segment id: {seg_id!r}")
    host = "-".join(parts[1:-2]) if len(parts) > 3 else None
    return int(parts[0]), host, int(parts[-2])


def write_segment(pending: Path, seg: Segment, *, generation: str | None = None,
                  check: Callable[[], None] | None = None) -> str:
    """Durably write ``seg`` into the ``pending`` folder and return its id.

    Args:
        pending: the set's ``_pending`` folder; made when missing, but its parent (the set's
            directory) must exist: a writer never makes the directory of a deleted set.
        seg: the segment.
        generation: generation of the set written for (default ``seg.generation``).
        check: called before every attempt; it raises to stop the write (e.g. the set was made anew).

    A consolidation removes the folder once it is empty. Only creating the temporary races that
    (see :func:`_create_temporary`): once it exists the folder is not empty. A temporary removed
    before its rename is written again, up to :data:`WRITE_TRIES` times.
    """
    seg_id = seg.seg_id or new_segment_id()
    arrays = {
        "names": np.asarray(seg.names, dtype=np.str_),
        "values": seg.values,
        "failed_names": np.asarray(list(seg.failed), dtype=np.str_),
        "failed_reasons": np.asarray(list(seg.failed.values()), dtype=np.str_),
        "generation": np.asarray(seg.generation if generation is None else generation, dtype=np.str_),
    }
    for key, col in seg.extras.items():
        arrays[f"extra__{key}"] = np.asarray(col, dtype=np.float32)
    if seg.frame_extra_lengths is not None:
        arrays["fextra_lengths"] = np.asarray(seg.frame_extra_lengths, dtype=np.int64)
        for key, col in seg.frame_extras.items():
            arrays[f"fextra__{key}"] = np.asarray(col, dtype=np.float32)
    if seg.lengths is not None:
        arrays["lengths"] = np.asarray(seg.lengths, dtype=np.int64)
        arrays["times"] = np.asarray(seg.times, dtype=np.float32)
    tmp = pending / f".{seg_id}.tmp"
    for attempt in range(1, WRITE_TRIES + 1):
        if check is not None:
            check()
        fd = _create_temporary(pending, tmp, check)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, pending / f"{seg_id}.npz")
        except FileNotFoundError:  # the temporary removed before its rename (a stale-temporary sweep)
            if attempt == WRITE_TRIES:
                raise
            log.debug("%s: temporary of segment %s vanished (attempt %d); writing it again", pending.parent,
                      seg_id, attempt)
            continue
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)  # a write the file system refused: leave no temporary behind
            raise
        break
    try:
        fsync_path(pending)
    except FileNotFoundError:
        pass  # a consolidation merged the segment and removed the folder already (it fsyncs its commit)
    return seg_id


def _create_temporary(pending: Path, tmp: Path, check: Callable[[], None] | None) -> int:
    """Make ``pending`` if needed and create ``tmp`` in it; return its open descriptor.

    A consolidation removes ``pending`` when it is empty, so it may vanish between making it and
    creating the file; that is retried (with jittered back-off) for up to :data:`CREATE_DEADLINE_S`.
    Once the temporary exists the folder is not empty and cannot be removed under the writer.
    A missing set directory is not retried: ``check`` says why (e.g. the set was made anew), or the
    ``FileNotFoundError`` is raised.
    """
    deadline = time.monotonic() + CREATE_DEADLINE_S
    attempt = 0
    while True:
        attempt += 1
        try:
            os.mkdir(pending)  # not Path.mkdir(exist_ok=True): that raises if the folder is removed meanwhile
        except FileExistsError:
            pass
        except FileNotFoundError:
            if check is not None:
                check()
            raise
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            if attempt > 3:
                time.sleep(random.uniform(0, min(0.01, 0.0002 * attempt)))  # out of step with the remover


def read_segment(path: Path) -> Segment:
    """Load one committed segment file."""
    with np.load(path, allow_pickle=False) as z:
        failed = dict(zip(z["failed_names"].tolist(), z["failed_reasons"].tolist()))
        lengths = z["lengths"] if "lengths" in z.files else None
        times = z["times"] if "times" in z.files else None
        extras = {k[len("extra__"):]: z[k] for k in z.files if k.startswith("extra__")}
        fx_lengths = z["fextra_lengths"] if "fextra_lengths" in z.files else None
        fx = {k[len("fextra__"):]: z[k] for k in z.files if k.startswith("fextra__")}
        return Segment(names=z["names"].tolist(), values=z["values"], lengths=lengths, times=times,
                       failed=failed, extras=extras, frame_extras=fx, frame_extra_lengths=fx_lengths,
                       seg_id=path.stem, generation=_generation(z))


def read_segment_names(path: Path) -> tuple[list[str], list[str]]:
    """Done and failed clip names of a segment, without loading its vectors."""
    names, failed, _ = read_segment_header(path)
    return names, failed


def read_segment_header(path: Path) -> tuple[list[str], list[str], str]:
    """Done and failed clip names and the generation of a segment, without loading its vectors."""
    with np.load(path, allow_pickle=False) as z:
        return z["names"].tolist(), z["failed_names"].tolist(), _generation(z)


def _generation(z: Any) -> str:
    """The generation an open ``.npz`` records (legacy segments have none)."""
    return str(z["generation"]) if "generation" in z.files else LEGACY_GENERATION


def set_aside(path: Path) -> Path:
    """Move an unreadable segment out of ``_pending/`` into the set's ``_unreadable/``; returns where.

    Its clips stop counting as done, so the next run redoes them; the file is kept, not deleted.
    """
    dest = path.parent.parent / UNREADABLE_DIR
    dest.mkdir(exist_ok=True)
    target = dest / path.name
    os.replace(path, target)
    fsync_path(path.parent)
    return target


def list_segments(pending: Path) -> list[Path]:
    """Committed segment files, oldest first."""
    if not pending.is_dir():
        return []
    return sorted(p for p in pending.glob("*.npz") if not p.name.startswith("."))


def remove_stale_temporaries(pending: Path) -> int:
    """Delete temporaries left by writers that died mid-write; returns how many were removed.

    Removed: this host's temporaries whose pid is dead, old-format ones (no host) whose pid is dead
    here, ones with no readable id, and any older than :data:`STALE_TEMP_AGE_S`. Another host's
    recent temporaries are kept: their pid says nothing about processes on this host.
    """
    removed = 0
    if not pending.is_dir():
        return 0
    me = host_name()
    for tmp in pending.glob(".*.tmp"):
        try:
            age = time.time() - tmp.stat().st_mtime
        except FileNotFoundError:
            continue  # renamed by its writer meanwhile
        try:
            _, host, pid = parse_segment_id(tmp.name[1:-len(".tmp")])
        except ValueError:
            host, pid = None, -1
        if age < STALE_TEMP_AGE_S:
            if host is not None and host != me:
                continue
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


def fsync_path(path: Path) -> None:
    """fsync one file or directory (opened read-only: Linux flushes its data and metadata)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
