"""Redone clips: how a clip written again (a forced redo, two overlapping runs) replaces its row.

Nothing below the committed counts is written before a commit. A consolidation appends a redone
clip's new row (vectors or frames, times, extras) beyond the counts like a new clip's, then commits
the new counts together with ``redone``: ``[old_row, new_row]`` pairs saying where each redone
clip's committed data now is. mer's readers follow the pairs (:func:`committed_names`), so they see
either the old commit or the new one, never a mix. After that commit :func:`finish_redone` puts the
rows in their final state and a second commit drops the pairs:

* utterance level: the new vectors and extras are copied into the old row, so the clip keeps its
  row (and the set its row order), and the old row's frame-extras span is pointed at the new frames
  (its old frames stay, unreachable); the appended row stays behind with name ``""`` (superseded);
* frame level: the old row's name is blanked (``""``, superseded) and the appended row is the clip's.

A crash between the two commits is finished by the next consolidation or ``mer store repair``.
Plain Zarr readers skip rows named ``""``; in the short window between the two commits they may see
a frame-level clip twice (the later row is current) or an utterance-level clip's previous vectors.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import zarr

from . import frame_extras as fx
from .durable import sync_commit, sync_rows
from .layout import ATTR

log = logging.getLogger(__name__)

REDONE = "redone"  # attribute: [old_row, new_row] pairs committed but not yet finished


def redone_pairs(meta: dict[str, Any]) -> list[tuple[int, int]]:
    """The committed ``[old_row, new_row]`` pairs of ``meta`` that lie inside its rows."""
    n = int(meta["n_rows"])
    return [(int(a), int(b)) for a, b in meta.get(REDONE, []) if 0 <= int(a) < n and 0 <= int(b) < n]


def committed_names(names: zarr.Array, meta: dict[str, Any]) -> np.ndarray:
    """``names[:n_rows]`` as the ledger ``meta`` commits them: one row per clip, ``""`` elsewhere."""
    raw = np.asarray(names[: int(meta["n_rows"])])
    pairs = [(a, b) for a, b in redone_pairs(meta) if max(a, b) < len(raw)]  # names cut short: `check`
    if pairs:
        raw = raw.copy()
        for old, new in pairs:
            if raw[new] == "":  # utterance level: the staged row is unnamed until the copy back
                raw[new] = raw[old]
            raw[old] = ""
    return raw


def commit_key(meta: dict[str, Any]) -> tuple[Any, ...]:
    """What changes with every commit that moves rows (to detect a commit between two reads)."""
    return (meta.get("n_rows"), meta.get("n_frames"), meta.get("n_superseded"),
            tuple(map(tuple, meta.get(REDONE, []))), tuple(meta.get("last_consolidation", [])), meta.get("updated"))


def finish_redone(group: zarr.Group, meta: dict[str, Any]) -> int:
    """Move the redone clips of the last commit into their final rows, then commit without the pairs.

    Idempotent (it reads what it copies from the arrays); call it holding the set's lock. ``meta``
    is updated in place. Returns the number of clips finished.
    """
    if REDONE not in meta:
        return 0
    pairs = redone_pairs(meta)
    if pairs:
        old = np.array([a for a, _ in pairs], dtype=np.int64)
        new = np.array([b for _, b in pairs], dtype=np.int64)
        rows = [(int(a), int(a) + 1) for a in old]  # the rows rewritten, made durable before the commit
        if meta["level"] == "utt":
            _copy_rows(group["values"], new, old)
            ranges = {"values": rows}
            for key in meta.get("extras", []):
                if f"clip_{key}" in group and group[f"clip_{key}"].shape[0] >= int(meta["n_rows"]):
                    _copy_rows(group[f"clip_{key}"], new, old)
                    ranges[f"clip_{key}"] = rows
            spans = fx.spans_array(group)  # the old row is pointed at the clip's new frame extras
            if spans is not None and spans.shape[0] >= int(meta["n_rows"]):
                _copy_rows(spans, new, old)
                ranges[fx.SPANS_PATH] = rows
        else:
            group["names"].set_orthogonal_selection(old[np.argsort(old)], np.full(len(old), "", dtype=object))
            ranges = {"names": rows}
        sync_rows(group, ranges)
        log.debug("finished %d redone clips", len(pairs))
    del meta[REDONE]
    group.attrs[ATTR] = meta
    sync_commit(group)
    return len(pairs)


def _copy_rows(arr: zarr.Array, src: np.ndarray, dst: np.ndarray) -> None:
    """``arr[dst] = arr[src]`` along the first axis (orthogonal selections want sorted indices)."""
    rest = (slice(None),) * (arr.ndim - 1)
    s = np.argsort(src)
    data = np.empty((len(src),) + arr.shape[1:], dtype=arr.dtype)
    data[s] = arr.get_orthogonal_selection((src[s],) + rest)
    d = np.argsort(dst)
    arr.set_orthogonal_selection((dst[d],) + rest, data[d])
