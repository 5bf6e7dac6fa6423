"""``mer store check`` for per-frame extras (see :mod:`.frame_extras`).

Found: tails of ``spans`` or key arrays beyond the ledger (an unfinished append; ``repair`` cuts
them), and committed clips whose frame extras are lost: ``spans`` missing or shorter than the
ledger, a span that is impossible (a lost ``spans`` chunk reads -1) or, at frame level, that
differs from the clip's frames, a key array missing or shorter than ``n_extra_frames``, or a chunk
of a key array not on disk (every chunk is stored, all-NaN ones too, so a missing file is a lost
chunk, not "not recorded"). ``repair`` marks those clips not done, like clips whose vectors are
lost (the caller blanks their names), gives their rows empty spans and stores NaN where key data was
lost, so that the set checks clean and a rerun redoes exactly those clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import frame_extras as fx
from .durable import chunk_paths


def check_frame_extras(path: Path, group: zarr.Group, meta: dict[str, Any], offsets: np.ndarray | None, *,
                       repair: bool) -> tuple[list[tuple[str, bool]], dict[int, str]]:
    """Check (and with ``repair`` fix) the frame extras of the set at ``path``.

    ``offsets`` are the set's committed frame offsets (frame level) or ``None``. Returns the
    findings that concern no single clip as ``(text, fixed)``, and row -> reason for the committed
    rows whose frame extras are lost (the caller reports the named ones and, with ``repair``,
    marks them not done).
    """
    recorded = fx.keys(meta)
    if not recorded and fx.GROUP not in group:
        return [], {}
    n, nx = int(meta["n_rows"]), int(meta.get(fx.COUNT_ATTR, 0))
    notes: list[tuple[str, bool]] = []
    bad: dict[int, str] = {}
    sub = group[fx.GROUP] if fx.GROUP in group else None
    for name in sorted(sub.array_keys()) if sub is not None else []:  # uncommitted tails
        size = n if name == fx.SPANS else nx
        have = sub[name].shape[0]
        if have > size:
            notes.append((f"{fx.GROUP}/{name} has {have - size} uncommitted rows beyond the ledger "
                          "(interrupted consolidation)", repair))
            if repair:
                sub[name].resize((size,) + sub[name].shape[1:])
    if not recorded:
        return notes, bad

    spans = _spans(sub, n, bad)
    starts, ends = spans[:, 0], spans[:, 1]
    wrong = (starts < 0) | (ends < starts) | (ends > nx)
    if offsets is not None:  # frame level: a clip's frame extras are its frames, or none
        length = ends - starts
        wrong |= (length != 0) & (length != np.diff(offsets[: n + 1]))
    for row in np.flatnonzero(wrong):
        bad.setdefault(int(row), "frame extras missing (a lost or damaged chunk of frame_extras/spans)")
    used = ~wrong & (ends > starts)
    lost_frames: list[tuple[int, int]] = []
    for key in recorded:
        lost = _lost_key_frames(path, sub, key, nx)
        lost_frames.extend(lost)
        for a, b in lost:
            for row in np.flatnonzero(used & (starts < b) & (ends > a)):
                bad.setdefault(int(row), f"frame extras missing (a lost chunk of {fx.GROUP}/{key})")
    if repair and (bad or lost_frames):
        _mend(group, recorded, n, nx, sorted(bad), lost_frames)
    return notes, bad


def _spans(sub: zarr.Group | None, n: int, bad: dict[int, str]) -> np.ndarray:
    """Committed spans, ``[n, 2]``; rows beyond a short (or missing) array read -1 and go to ``bad``."""
    out = np.full((n, 2), -1, dtype=np.int64)
    if sub is None or fx.SPANS not in sub:
        for row in range(n):
            bad[row] = f"frame extras missing ({fx.SPANS_PATH} lost)"
        return out
    have = min(n, sub[fx.SPANS].shape[0])
    out[:have] = sub[fx.SPANS][:have]
    for row in range(have, n):
        bad[row] = f"frame extras missing ({fx.SPANS_PATH} shorter than the ledger)"
    return out


def _lost_key_frames(path: Path, sub: zarr.Group | None, key: str, nx: int) -> list[tuple[int, int]]:
    """``[a, b)`` frame ranges below ``nx`` whose data of ``key`` is not on disk."""
    if sub is None or key not in sub:
        return [(0, nx)] if nx else []
    arr = sub[key]
    lost = [(min(arr.shape[0], nx), nx)] if arr.shape[0] < nx else []
    size = int(arr.metadata.chunk_grid.chunk_shape[0])  # type: ignore[union-attr]
    top = min(arr.shape[0], nx)
    for i in range(-(-top // size)):
        a, b = i * size, min(top, (i + 1) * size)
        if not all(p.is_file() for p in chunk_paths(arr, [(a, b)], path / fx.GROUP)):
            lost.append((a, b))
    return sorted(lost)


def _mend(group: zarr.Group, recorded: list[str], n: int, nx: int, rows: list[int],
          lost: list[tuple[int, int]]) -> None:
    """Give ``rows`` empty spans and store NaN over the ``lost`` frames of every key (repair only)."""
    spans = fx.require_array(group, fx.SPANS)
    if spans.shape[0] != n:
        spans.resize((n, 2))
    if rows:
        idx = np.asarray(rows, dtype=np.int64)
        spans.set_orthogonal_selection((idx, slice(None)), np.zeros((len(idx), 2), np.int64))
    for key in recorded:
        arr = fx.require_array(group, key)
        if arr.shape[0] != nx:
            arr.resize((nx,))
        for a, b in lost:
            arr[a:b] = np.nan
