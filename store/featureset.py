"""One feature set: read access, the completion ledger, and the entry points for writers.

A clip is *done* when its name is in the set's ``names`` array (committed by a consolidation) or in
a committed write-ahead segment under ``_pending/``; it is *failed* when the ledger records a reason
and it is not done. Reads see committed clips only (a redone clip's old row until the commit that
supersedes it, its new row after); ``mer store check --fix`` (or the next writer) consolidates
segments left behind by a process that died.

A set's *generation* (``attributes.mer.generation``, a random id made by ``create``; missing, i.e.
``""``, in sets written before generations existed) changes when the set is deleted and made anew
(``--force``). A handle remembers the generation it was made for and stamps it on every segment it
writes; once the set has another generation (or is gone), writing through the handle raises
:class:`~mer.store.errors.FeatureSetRecreated`, and segments of another generation are not done
and never merged (a consolidation drops them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from . import frame_extras as fx
from .errors import FeatureSetRecreated, MissingClipsError
from .layout import ATTR, PENDING_DIR
from .provenance import Provenance
from .segments import LEGACY_GENERATION, UNREADABLE_ERRORS, Segment, list_segments, read_segment_header, write_segment
from .supersede import commit_key, committed_names

if TYPE_CHECKING:
    from .writer import FeatureSetWriter

log = logging.getLogger(__name__)

SNAPSHOT_TRIES = 20  # re-reads of the ledger when a commit lands between reading it and the names


@dataclass
class FrameBatch:
    """Frame-level features of several clips as one padded array.

    Attributes:
        values: ``[N, T_max, D]``, zeros where ``mask`` is False.
        mask: ``[N, T_max]`` bool, True on real frames.
        times: ``[N, T_max]`` float32 seconds, NaN on padding (and where unknown).
        lengths: ``[N]`` frames per clip.
    """

    values: np.ndarray
    mask: np.ndarray
    times: np.ndarray
    lengths: np.ndarray


class FeatureSet:
    """A ``<modality>/<name>`` group of a :class:`~mer.store.FeatureStore`.

    Instances are cheap handles: every call re-reads the group's metadata, so a handle stays
    correct while other processes append to the set. Reads follow the set as it is now; writes
    belong to the generation the handle was made for (:attr:`generation`).
    """

    def __init__(self, root: Path, key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.path = self.root / key
        self._generation = self.current_generation()

    @property
    def generation(self) -> str:
        """Generation of the set this handle writes for (read when the handle was made)."""
        if self._generation is None:  # made before the set existed
            self._generation = self.current_generation()
        return LEGACY_GENERATION if self._generation is None else self._generation

    def current_generation(self) -> str | None:
        """The set's generation as stored now; ``None`` when the set is gone or unreadable."""
        try:
            return str(self.meta().get("generation", LEGACY_GENERATION))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ---- metadata -------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The set's ``mer`` attribute dict (layout, counts, provenance, failures)."""
        with open(self.path / "zarr.json", encoding="utf-8") as f:
            return json.load(f)["attributes"][ATTR]

    @property
    def level(self) -> str:
        """``utt`` or ``frame``."""
        return self.meta()["level"]

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.meta()["dim"])

    @property
    def dtype(self) -> str:
        """Stored dtype of the vectors."""
        return self.meta()["dtype"]

    @property
    def provenance(self) -> Provenance:
        """What produced the vectors."""
        return Provenance.from_dict(self.meta()["provenance"])

    def group(self, mode: str = "r") -> zarr.Group:
        """The set as a Zarr group (``mode='r+'`` for writers)."""
        return zarr.open_group(str(self.path), mode=mode)

    @property
    def pending_dir(self) -> Path:
        """Folder of write-ahead segments not yet consolidated."""
        return self.path / PENDING_DIR

    # ---- ledger ---------------------------------------------------------------------------
    def _snapshot(self) -> tuple[dict[str, Any], np.ndarray]:
        """The ledger and its committed names (superseded rows as ``""``), read consistently.

        The names are read between two reads of the ledger; when a commit lands in between (a
        concurrent consolidation), both are read again, so rows and names belong to one commit.
        """
        meta = self.meta()
        for _ in range(SNAPSHOT_TRIES):
            names = committed_names(self.group()["names"], meta)
            again = self.meta()
            if commit_key(again) == commit_key(meta):
                return meta, names
            meta = again
        log.debug("%s: the ledger kept changing while reading names; using the latest", self.key)
        return meta, committed_names(self.group()["names"], meta)

    def _raw_names(self) -> np.ndarray:
        """The committed ``names`` array, superseded rows included as ``""``."""
        return self._snapshot()[1]

    def names(self) -> list[str]:
        """Committed clip names in row order (superseded rows left out)."""
        raw = self._raw_names()
        return raw[raw != ""].tolist()

    def index(self) -> dict[str, int]:
        """Clip name -> row of the committed arrays."""
        raw = self._raw_names()
        rows = np.flatnonzero(raw != "")
        return dict(zip(raw[rows].tolist(), rows.tolist()))

    def pending_names(self) -> tuple[set[str], dict[str, str]]:
        """Done and failed names held in uncommitted segments of the set's current generation."""
        done: set[str] = set()
        failed: dict[str, str] = {}
        current = self.current_generation()
        for path in list_segments(self.pending_dir):
            try:
                d, f, generation = read_segment_header(path)
            except UNREADABLE_ERRORS as exc:  # deleted by a concurrent consolidation, or damaged
                log.debug("segment %s vanished or is unreadable: %s", path, exc)
                continue
            if generation != current:  # left by a writer of the set's previous incarnation
                log.debug("segment %s belongs to generation %r, not the set's %r: not done", path, generation,
                          current)
                continue
            done.update(d)
            failed.update(dict.fromkeys(f, "recorded in a pending segment"))
        return done, failed

    def done_names(self) -> set[str]:
        """Every clip whose vectors are durably written (committed or pending)."""
        pending, _ = self.pending_names()
        return set(self.names()) | pending

    def failures(self) -> dict[str, str]:
        """Failed clip -> reason, for clips that are not done."""
        recorded = {k: v["reason"] for k, v in self.meta().get("failures", {}).items()}
        done_pending, failed_pending = self.pending_names()
        for name in failed_pending:
            recorded.setdefault(name, failed_pending[name])
        return {k: v for k, v in recorded.items() if k not in done_pending}

    # ---- reading --------------------------------------------------------------------------
    def _rows_for(self, names: list[str] | None) -> tuple[list[str], np.ndarray, dict[str, Any]]:
        """Names, their committed rows, and the ledger those rows belong to."""
        meta, raw = self._snapshot()
        present = np.flatnonzero(raw != "")
        if names is None:
            return raw[present].tolist(), present, meta
        index = dict(zip(raw[present].tolist(), present.tolist()))
        names = [str(n) for n in names]
        missing = [n for n in names if n not in index]
        if missing:
            raise MissingClipsError(self.key, missing, len(names))
        return names, np.array([index[n] for n in names], dtype=np.int64), meta

    def read(self, names: list[str] | None = None, *, dtype: str | None = None) -> np.ndarray | list[np.ndarray]:
        """Vectors aligned to ``names`` (all committed clips in row order when ``None``).

        Utterance level returns ``[N, D]``; frame level a list of ``[T_i, D]`` arrays (see
        :meth:`read_padded`). Unknown names raise :class:`MissingClipsError` listing them.
        """
        names, rows, meta = self._rows_for(names)
        g = self.group()
        if meta["level"] == "utt":
            out = _take_rows(g["values"], rows)
            return out.astype(dtype) if dtype else out
        chunks = _take_ranges(g["values"], *_frame_ranges(g, meta, rows))
        return [c.astype(dtype) if dtype else c for c in chunks]

    def read_extra(self, key: str, names: list[str] | None = None) -> np.ndarray:
        """Per-clip number ``key`` (e.g. ``faces``) aligned to ``names``; NaN where not recorded."""
        names, rows, meta = self._rows_for(names)
        g = self.group()
        if f"clip_{key}" not in g:
            known = ", ".join(meta.get("extras", [])) or "none"
            raise KeyError(f"feature set {self.key!r} records no per-clip {key!r} (recorded: {known})")
        return g[f"clip_{key}"][:][rows]

    def frame_extra_keys(self) -> list[str]:
        """Keys of the per-frame numbers the set records (e.g. ``face_x0``, ``face_score``)."""
        return fx.keys(self.meta())

    def read_frame_extra(self, key: str, names: list[str] | None = None) -> list[np.ndarray]:
        """Per-frame number ``key`` of each clip, aligned to ``names``: one ``[T_i]`` float32 array each.

        ``T_i`` is the number of frames the clip was decoded with (a frame-level clip's frames); an
        empty array for a clip written without frame extras, NaN where it lacked ``key``. An unknown
        key raises ``KeyError`` listing the recorded ones.
        """
        names, rows, meta = self._rows_for(names)
        g = self.group()
        arr, starts, ends = fx.spans_for(g, meta, self.key, key, rows, names)
        return _take_ranges(arr, starts, ends)

    def read_times(self, names: list[str] | None = None) -> list[np.ndarray]:
        """Per-frame timestamps (seconds) of frame-level clips, aligned to ``names``."""
        if self.level != "frame":
            raise ValueError(f"feature set {self.key!r} is utterance level: it has no frame times")
        names, rows, meta = self._rows_for(names)
        g = self.group()
        return _take_ranges(g["times"], *_frame_ranges(g, meta, rows))

    def read_padded(self, names: list[str] | None = None, *, dtype: str = "float32",
                    max_frames: int | None = None) -> FrameBatch:
        """Frame-level clips as a zero-padded ``[N, T_max, D]`` array plus mask, times and lengths."""
        if self.level != "frame":
            raise ValueError(f"feature set {self.key!r} is utterance level: use read()")
        clips = self.read(names, dtype=dtype)
        times = self.read_times(names)
        assert isinstance(clips, list)
        lengths = np.array([min(len(c), max_frames or len(c)) for c in clips], dtype=np.int64)
        t_max = int(lengths.max()) if len(lengths) else 0
        out = np.zeros((len(clips), t_max, self.dim), dtype=dtype)
        mask = np.zeros((len(clips), t_max), dtype=bool)
        tt = np.full((len(clips), t_max), np.nan, dtype=np.float32)
        for i, (c, t, n) in enumerate(zip(clips, times, lengths)):
            out[i, :n] = c[:n]
            mask[i, :n] = True
            tt[i, :n] = t[:n]
        return FrameBatch(values=out, mask=mask, times=tt, lengths=lengths)

    # ---- writing --------------------------------------------------------------------------
    def writer(self, *, flush_rows: int = 256, flush_seconds: float = 60.0,
               consolidate_every: int = 32) -> FeatureSetWriter:
        """A buffered writer; use it as a context manager (closing flushes and consolidates)."""
        from .writer import FeatureSetWriter

        return FeatureSetWriter(self, flush_rows=flush_rows, flush_seconds=flush_seconds,
                                consolidate_every=consolidate_every)

    def write_segment(self, segment: Segment) -> str:
        """Commit one segment (used directly by distributed workers); returns its id.

        Raises :class:`~mer.store.errors.FeatureSetRecreated` when the set was deleted or made
        anew since this handle was made; a recreate racing the write itself leaves a segment of
        the old generation, which is not done and is dropped by the next consolidation.
        """
        generation = self.generation

        def same_set() -> None:
            found = self.current_generation()
            if found != generation:
                raise FeatureSetRecreated(self.key, self.root, generation, found,
                                          len(segment.names) + len(segment.failed))

        return write_segment(self.pending_dir, segment, generation=generation, check=same_set)

    def consolidate(self, *, timeout: float = 600.0) -> int:
        """Merge pending segments into the arrays; returns the number of clips merged."""
        from .consolidate import consolidate

        return consolidate(self, timeout=timeout)

    def nbytes(self) -> int:
        """Bytes the set occupies on disk."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return f"FeatureSet({self.key!r}, root={str(self.root)!r})"


def _frame_ranges(g: zarr.Group, meta: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end frame of each row of a frame-level set (from the committed offsets)."""
    offsets = g["offsets"][: meta["n_rows"] + 1]
    return offsets[rows], offsets[rows + 1]


def _take_rows(values: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows of a 2-D array; reads one contiguous block when that is cheaper than picking."""
    if len(rows) == 0:
        return np.zeros((0, values.shape[1]), dtype=values.dtype)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if hi - lo == len(rows) and np.array_equal(rows, np.arange(lo, hi)):
        return values[lo:hi]  # the common whole-set read: no copy after decoding
    if hi - lo <= 4 * len(rows):
        block = values[lo:hi]
        return block[rows - lo]
    order = np.argsort(rows)
    picked = values.get_orthogonal_selection((rows[order], slice(None)))
    out = np.empty_like(picked)
    out[order] = picked
    return out


def _take_ranges(arr: zarr.Array, starts: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    """Slices ``arr[s:e]`` for each pair; one bulk read when the ranges cover much of the span."""
    if len(starts) == 0:
        return []
    lo, hi = int(starts.min()), int(ends.max())
    total = int((ends - starts).sum())
    if hi - lo <= 4 * max(total, 1):
        block = arr[lo:hi]
        return [block[s - lo:e - lo] for s, e in zip(starts, ends)]
    return [arr[int(s):int(e)] for s, e in zip(starts, ends)]
