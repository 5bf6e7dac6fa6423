"""Merge write-ahead segments into a feature set's Zarr arrays.

Only one consolidation runs per set at a time (``flock`` on the set directory). The commit point
is the rewrite of the group's ``zarr.json`` (atomic: temporary file + rename) that raises
``n_rows``/``n_frames``; array rows beyond those counts are an unfinished append and are cut off
by the next consolidation. The ids of the segments merged by a commit are recorded in it, so a
crash between the commit and the deletion of those segment files never merges them twice.

A clip that is already committed and arrives again (a forced redo, two overlapping runs) is
appended like a new one at either level: nothing below the committed counts is written before the
commit, so readers see the old commit until the new one. The commit also records which old row each
redone clip replaces; the rows are then put in their final state (the old row takes the new vectors
at utterance level, is blanked at frame level) and a second commit drops that record (see
:mod:`.supersede`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from . import frame_extras as fx
from .durable import sync_commit, sync_rows
from .errors import StoreError, StoreWriteError
from .layout import ATTR, INDEX_CHUNK
from .lock import locked
from .provenance import utc_now
from .segments import (
    UNREADABLE_ERRORS,
    Segment,
    list_segments,
    read_segment,
    remove_pending_dir_if_empty,
    remove_stale_temporaries,
    set_aside,
)
from .supersede import REDONE, committed_names, finish_redone

if TYPE_CHECKING:
    from .featureset import FeatureSet

log = logging.getLogger(__name__)

# Segments merged per commit, to bound memory: a merge holds the batch's segments plus a
# concatenated copy in the stored dtype, several times this. At 512 MiB a 10,000-clip frame-level
# run (483 MiB of float16 features) peaked 1,057 MiB above a 1,000-clip run
# (benchmarks/extract_scaling.py); a commit costs milliseconds, so batches stay small.
MAX_BATCH_BYTES = 64 * 1024 * 1024


def consolidate(fs: FeatureSet, *, timeout: float = 600.0) -> int:
    """Merge every committed segment of ``fs`` into its arrays; returns the number of clips merged."""
    pending = fs.pending_dir
    if not pending.is_dir() and REDONE not in fs.meta():
        return 0
    try:
        merged = _consolidate(fs, pending, timeout)
    except StoreError:
        raise  # a lock timeout (also an OSError) says what it is already
    except OSError as exc:
        raise StoreWriteError(fs.key, fs.root, exc, "clips not yet merged stay committed in the write-ahead "
                              "segments (_pending/), and the next run or `mer store check --fix` merges them once "
                              "the store can be written") from exc
    if merged:
        log.info("consolidated %d clips into %s", merged, fs.key)
    return merged


def _consolidate(fs: FeatureSet, pending: Any, timeout: float) -> int:
    merged = 0
    with locked(fs.path, timeout=timeout, what=f"feature set {fs.key!r}"):
        group = fs.group(mode="r+")
        meta = dict(group.attrs[ATTR])
        finish_redone(group, meta)  # a consolidation that died between its two commits
        remove_stale_temporaries(pending)
        for seg_id in meta.get("last_consolidation", []):  # merged before a crash, not yet deleted
            (pending / f"{seg_id}.npz").unlink(missing_ok=True)
        batch: list[Segment] = []
        size = 0
        for path in list_segments(pending):
            try:
                seg = read_segment(path)
            except UNREADABLE_ERRORS as exc:
                moved = set_aside(path)
                log.warning("%s: write-ahead segment %s is unreadable (%s: %s); set aside as %s: its clips are "
                            "not done and the next run redoes them", fs.key, path.name, type(exc).__name__, exc,
                            moved)
                continue
            if seg.generation != meta.get("generation", ""):  # an old writer's, after --force made the set anew
                path.unlink(missing_ok=True)
                log.warning("%s: write-ahead segment %s was written for an earlier incarnation of the set (generation "
                            "%r, the set's is %r: deleted or started anew with --force while that writer was active); "
                            "dropped, not merged: its %d clips are not done", fs.key, path.name, seg.generation,
                            meta.get("generation", ""), len(seg.names))
                continue
            batch.append(seg)
            size += seg.nbytes
            if size >= MAX_BATCH_BYTES:
                merged += _merge(group, meta, batch)
                _delete(pending, batch)
                batch, size = [], 0
        if batch:
            merged += _merge(group, meta, batch)
            _delete(pending, batch)
        remove_pending_dir_if_empty(pending)
    return merged


def _delete(pending: Any, batch: list[Segment]) -> None:
    for seg in batch:
        (pending / f"{seg.seg_id}.npz").unlink(missing_ok=True)


def _latest(batch: list[Segment]) -> tuple[dict[str, tuple[Segment, int]], dict[str, str]]:
    """Latest version of each clip across the batch (later segments win), and failures."""
    done: dict[str, tuple[Segment, int]] = {}
    failed: dict[str, str] = {}
    for seg in batch:
        failed.update(seg.failed)
        for i, name in enumerate(seg.names):
            done.pop(name, None)  # re-insert so dict order is the latest arrival
            done[name] = (seg, i)
    return done, failed


def _merge(group: zarr.Group, meta: dict[str, Any], batch: list[Segment]) -> int:
    """Append the batch's clips beyond the committed counts, then commit by rewriting the attributes.

    Clips already committed (redone) are appended after the new ones, unnamed at utterance level;
    the commit pairs each with the row it replaces and :func:`finish_redone` completes the move.
    """
    latest, failed = _latest(batch)
    n, f = int(meta["n_rows"]), int(meta["n_frames"])
    f0 = f
    _truncate(group, meta, n, f)
    existing = {str(x): i for i, x in enumerate(committed_names(group["names"], meta)) if x != ""}
    new = [k for k in latest if k not in existing]
    redo = [k for k in latest if k in existing]
    done = {k: latest[k] for k in new + redo}  # the order of the appended rows
    if meta["level"] == "utt":
        _append_vectors(group, meta, done, n)
        _append_names(group, new + [""] * len(redo), n)  # named by the copy back into the old rows
    else:
        f += _append_frames(group, meta, done, n, f)
        _append_names(group, new + redo, n)
    _write_extras(group, meta, done, n)
    fx_ranges = fx.append(group, meta, list(done.values()), n)

    now = utc_now()
    failures = dict(meta.get("failures", {}))
    for name, reason in failed.items():
        failures[name] = {"reason": reason, "time": now}
    for name in done:
        failures.pop(name, None)
    meta.update(n_rows=n + len(done), n_frames=f, failures=failures, updated=now,
                n_superseded=int(meta.get("n_superseded", 0)) + len(redo),
                last_consolidation=[seg.seg_id for seg in batch])
    if redo:
        meta[REDONE] = [[existing[k], n + len(new) + j] for j, k in enumerate(redo)]
        log.info("%d clips redone: %s", len(redo), ", ".join(redo[:10]) + (", ..." if len(redo) > 10 else ""))
    rows = [(n, n + len(done))]  # durable before the commit: the chunks written, array metadata, dirs
    ranges = {"names": rows, "values": rows, **{f"clip_{k}": rows for k in meta["extras"]}}
    if meta["level"] == "frame":
        ranges.update(offsets=[(n + 1, n + len(done) + 1)], values=[(f0, f)], times=[(f0, f)])
    sync_rows(group, {**ranges, **fx_ranges})
    group.attrs[ATTR] = meta  # the commit
    sync_commit(group)  # and the commit before the segments are deleted
    finish_redone(group, meta)
    return len(done)


def _append_vectors(group: zarr.Group, meta: dict[str, Any], done: dict[str, tuple[Segment, int]], n: int) -> None:
    """Utterance level: the clips' vectors as rows ``n ...`` of ``values``."""
    if not done:
        return
    values = group["values"]
    vecs = np.stack([_vec(e) for e in done.values()]).astype(np.dtype(meta["dtype"]))
    values.resize((n + len(done), values.shape[1]))
    values[n:] = vecs


def _append_frames(group: zarr.Group, meta: dict[str, Any], done: dict[str, tuple[Segment, int]], n: int,
                   f: int) -> int:
    """Frame level: the clips' frames and times from frame ``f``, their offsets from row ``n``.

    Returns the number of frames appended.
    """
    if not done:
        return 0
    clips = [_frames(e) for e in done.values()]
    lengths = np.array([len(v) for v, _ in clips], dtype=np.int64)
    total = int(lengths.sum())
    values = group["values"]
    values.resize((f + total, values.shape[1]))
    values[f:] = np.concatenate([v for v, _ in clips]).astype(np.dtype(meta["dtype"]))
    times = group["times"]
    times.resize((f + total,))
    times[f:] = np.concatenate([t for _, t in clips]).astype(np.float32)
    offsets = group["offsets"]
    offsets.resize((n + len(clips) + 1,))
    offsets[n + 1:] = f + np.cumsum(lengths)
    return total


def _append_names(group: zarr.Group, names: list[str], n: int) -> None:
    if not names:
        return
    arr = group["names"]
    arr.resize((n + len(names),))
    arr[n:] = np.array(names, dtype=object)


def _write_extras(group: zarr.Group, meta: dict[str, Any], done: dict[str, tuple[Segment, int]], n: int) -> None:
    """Per-clip numbers (``clip_<key>`` arrays, NaN where not recorded) of the rows appended from ``n``.

    Rows below ``n`` are not written here: a redone clip's numbers reach its old row (utterance
    level) only after the commit, by :func:`finish_redone`.
    """
    keys = set(meta.get("extras", []))
    for seg, _ in done.values():
        keys.update(seg.extras)
    for key in sorted(keys):
        name = f"clip_{key}"
        if name not in group:
            group.create_array(name, shape=(0,), chunks=(INDEX_CHUNK,), dtype="float32", fill_value=np.nan,
                               dimension_names=("row",))
        arr = group[name]
        # Rows from n on are rewritten below. An array not yet listed may be longer (made by a
        # consolidation that died before its commit: its rows below n are NaN) or shorter (new to
        # the set, or cut short); growing may expose stale values of a chunk cut earlier: not recorded.
        have = arr.shape[0]
        arr.resize((n + len(done),))
        if have < n:
            arr[have:n] = np.nan
        if done:
            arr[n:] = np.array([seg.extras[key][i] if key in seg.extras else np.nan for seg, i in done.values()],
                               dtype=np.float32)
    meta["extras"] = sorted(keys)


def _truncate(group: zarr.Group, meta: dict[str, Any], n: int, f: int) -> None:
    """Cut array tails written by a consolidation that died before its commit."""
    if group["names"].shape[0] != n:
        group["names"].resize((n,))
    for key in meta.get("extras", []):  # one created by a consolidation that died: see _write_extras
        if f"clip_{key}" in group and group[f"clip_{key}"].shape[0] > n:
            group[f"clip_{key}"].resize((n,))
    fx.truncate(group, meta, n)
    if meta["level"] == "utt":
        if group["values"].shape[0] != n:
            group["values"].resize((n, group["values"].shape[1]))
        return
    if group["offsets"].shape[0] != n + 1:
        group["offsets"].resize((n + 1,))
    for key in ("values", "times"):
        arr = group[key]
        if arr.shape[0] != f:
            arr.resize((f,) + arr.shape[1:])


def _vec(entry: tuple[Segment, int]) -> np.ndarray:
    seg, i = entry
    return seg.values[i]


def _frames(entry: tuple[Segment, int]) -> tuple[np.ndarray, np.ndarray]:
    seg, i = entry
    return seg.frames(i)
