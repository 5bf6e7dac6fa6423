"""Per-frame extras: numbers per decoded frame kept beside a set's features, whatever its level.

The video stage records, for every frame it decodes, the face box (``face_x0`` ... ``face_y1``, as
fractions of the frame) and the detector's score. An utterance-level set pools the frames into one
vector, a frame-level set keeps one row per frame; either way the per-frame numbers are kept in a
sub-group of the set, made when the first clip with frame extras is merged::

    <set>/frame_extras/
        zarr.json            a group without attributes
        spans/               [N, 2] int64: row i's frames are [spans[i, 0], spans[i, 1]) of every key
                             array (empty: the clip recorded none); fill -1, so a lost chunk reads as
                             an impossible span
        <key>/               [F] float32, one array per key; NaN where a clip lacks the key

Spans rather than ``[N+1]`` offsets: utterance-level sets have no frame offsets, and a redone
utterance-level clip keeps its row, which is then pointed at its new frames (the old ones stay,
unreachable), the same way frame-level redos leave old frames behind. The ledger records the keys
(``attributes.mer.frame_extras``) and the committed length of the key arrays
(``attributes.mer.n_extra_frames``); array tails beyond it are an unfinished append.

Key arrays are written with ``write_empty_chunks`` (an all-NaN chunk, e.g. no face found in
thousands of frames, is still stored), so every chunk below ``n_extra_frames`` exists on disk and
``mer store check`` can tell a lost chunk from "not recorded". They are Zstd-compressed (zarr's
default): face boxes compress well and are read rarely.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .errors import ClipValueError

if TYPE_CHECKING:
    from .segments import Segment

GROUP = "frame_extras"
SPANS = "spans"
SPANS_PATH = f"{GROUP}/{SPANS}"
KEYS_ATTR = "frame_extras"  # ledger: the keys, sorted
COUNT_ATTR = "n_extra_frames"  # ledger: committed length of the key arrays
FX_CHUNK = 1 << 16  # frames per chunk of a key array (256 KiB float32 before compression)
SPAN_CHUNK = 1 << 16  # rows per chunk of spans
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def keys(meta: dict[str, Any]) -> list[str]:
    """Frame-extras keys a set's ledger records."""
    return list(meta.get(KEYS_ATTR, []))


def key_path(key: str) -> str:
    """Path of a key's array inside the set's group."""
    return f"{GROUP}/{key}"


def validate(set_key: str, clip: str, frame_extras: dict[str, Any] | None, n_frames: int | None
             ) -> dict[str, np.ndarray]:
    """A clip's frame extras as ``[T]`` float32 arrays of one length (``n_frames`` when given).

    Raises :class:`ClipValueError` naming the clip and the key that is wrong (a bad key name,
    not 1-D, not numeric, lengths that differ from each other or from the clip's frames).
    """
    out: dict[str, np.ndarray] = {}
    first: str | None = None
    for key, col in (frame_extras or {}).items():
        key = str(key)
        if not _KEY_RE.match(key) or key == SPANS:
            raise ClipValueError(set_key, clip, f"frame extra key {key!r} is not a valid array name "
                                 "(letters, digits, '.', '_', '-'; not 'spans')")
        arr = np.asarray(col)
        if arr.ndim != 1:
            raise ClipValueError(set_key, clip, f"frame extra {key!r} must be 1-D [T], got shape {arr.shape}")
        if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ClipValueError(set_key, clip, f"frame extra {key!r} has non-numeric dtype {arr.dtype}")
        if n_frames is not None and len(arr) != n_frames:
            raise ClipValueError(set_key, clip, f"frame extra {key!r} has {len(arr)} values but the clip has "
                                 f"{n_frames} frames")
        if first is not None and len(arr) != len(out[first]):
            raise ClipValueError(set_key, clip, f"frame extra {key!r} has {len(arr)} values but {first!r} has "
                                 f"{len(out[first])}")
        out[key] = arr.astype(np.float32)
        first = first or key
    return out


def pack(clips: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Validated per-clip frame extras as segment columns (NaN where a clip lacks a key) and lengths.

    Returns ``({}, None)`` when no clip has any.
    """
    names = sorted({k for fx in clips for k in fx})
    if not names:
        return {}, None
    lengths = np.array([len(next(iter(fx.values()))) if fx else 0 for fx in clips], dtype=np.int64)
    cols = {k: np.concatenate([fx.get(k, np.full(n, np.nan, np.float32)) for fx, n in zip(clips, lengths)]
                              ).astype(np.float32) for k in names}
    return cols, lengths


def _open(group: zarr.Group, path: str) -> zarr.Array:
    """An array of the sub-group that stores every chunk it writes, all-fill ones included."""
    return group[path].with_config({"write_empty_chunks": True})  # type: ignore[union-attr]


def require_array(group: zarr.Group, name: str) -> zarr.Array:
    """The set's ``frame_extras/<name>`` (``spans`` or a key) for writing, made empty when missing."""
    sub = group.require_group(GROUP)
    if name not in sub:
        if name == SPANS:
            sub.create_array(SPANS, shape=(0, 2), chunks=(SPAN_CHUNK, 2), dtype="int64", fill_value=-1,
                             dimension_names=("row", "bound"))
        else:
            sub.create_array(name, shape=(0,), chunks=(FX_CHUNK,), dtype="float32", fill_value=np.nan,
                             dimension_names=("extra_frame",))
    return _open(group, f"{GROUP}/{name}")


def spans_array(group: zarr.Group) -> zarr.Array | None:
    """The set's ``frame_extras/spans`` (for writing), or ``None`` when the set has none."""
    if GROUP not in group or SPANS not in group[GROUP]:
        return None
    return _open(group, SPANS_PATH)


def append(group: zarr.Group, meta: dict[str, Any], entries: list[tuple[Segment, int]], n: int
           ) -> dict[str, list[tuple[int, int]]]:
    """Write the frame extras of the clips appended as rows ``n ...`` (one write per array).

    Updates ``meta`` (keys, ``n_extra_frames``) for the commit and returns the row ranges written
    per array (for :func:`~mer.store.durable.sync_rows`). A set that has never had frame extras and
    gets none is left without the sub-group.
    """
    known = keys(meta)
    new_keys = sorted({k for seg, _ in entries for k in seg.frame_extras} - set(known))
    if not known and not new_keys:
        return {}
    nx = int(meta.get(COUNT_ATTR, 0))
    ranges: dict[str, list[tuple[int, int]]] = {SPANS_PATH: [(n, n + len(entries))]}
    spans = require_array(group, SPANS)
    have = spans.shape[0]
    spans.resize((n + len(entries), 2))
    if have < n:
        # rows committed before the set had frame extras recorded none: empty spans; rows of a set
        # that had them and lost them (check reports that) read as impossible spans
        spans[have:n] = 0 if not known else -1
        ranges[SPANS_PATH].append((have, n))
    bounds = [seg.frame_extra_span(i) for seg, i in entries]
    lengths = np.array([b - a for a, b in bounds], dtype=np.int64)
    ends = nx + np.cumsum(lengths)
    if entries:
        spans[n:] = np.stack([ends - lengths, ends], axis=1)
    total = int(lengths.sum())
    for key in sorted(set(known) | set(new_keys)):
        arr = require_array(group, key)
        written = [(nx, nx + total)]
        if key not in known and nx:  # new to the set: earlier clips lack it; store their NaN chunks too
            arr.resize((nx,))
            arr[:nx] = np.nan
            written.append((0, nx))
        arr.resize((nx + total,))
        if total:
            parts = []
            for (seg, _), (a, b) in zip(entries, bounds):
                col = seg.frame_extras.get(key)
                parts.append(col[a:b] if col is not None else np.full(b - a, np.nan, np.float32))
            arr[nx:] = np.concatenate(parts).astype(np.float32)
        ranges[key_path(key)] = written
    meta[KEYS_ATTR] = sorted(set(known) | set(new_keys))
    meta[COUNT_ATTR] = nx + total
    return ranges


def truncate(group: zarr.Group, meta: dict[str, Any], n: int) -> None:
    """Cut tails beyond the ledger (``n`` rows, ``n_extra_frames``) left by an unfinished append."""
    if GROUP not in group:
        return
    sub = group[GROUP]
    nx = int(meta.get(COUNT_ATTR, 0))
    for name in list(sub.array_keys()):
        arr = sub[name]
        size = n if name == SPANS else nx
        if arr.shape[0] > size:
            arr.resize((size,) + arr.shape[1:])


def spans_for(group: zarr.Group, meta: dict[str, Any], set_key: str, key: str, rows: np.ndarray,
              names: list[str]) -> tuple[zarr.Array, np.ndarray, np.ndarray]:
    """The key's array and the ``[start, end)`` frames of each of ``rows`` in it (for reading).

    Raises ``KeyError`` listing the recorded keys for an unknown one, and ``ValueError`` naming the
    clips whose spans are lost (``mer store repair`` marks them not done).
    """
    recorded = keys(meta)
    if key not in recorded:
        raise KeyError(f"feature set {set_key!r} records no per-frame {key!r} (recorded: "
                       f"{', '.join(recorded) or 'none'})")
    if not len(rows):
        return group[key_path(key)], np.zeros(0, np.int64), np.zeros(0, np.int64)
    spans = group[SPANS_PATH][: int(meta["n_rows"])][rows]
    starts, ends = spans[:, 0], spans[:, 1]
    bad = (starts < 0) | (ends < starts) | (ends > int(meta.get(COUNT_ATTR, 0)))
    if bad.any():
        lost = [names[i] for i in np.flatnonzero(bad)]
        raise ValueError(f"feature set {set_key!r}: frame extras of {len(lost)} clips are lost ("
                         f"{', '.join(lost[:10])}); `mer store repair` marks them not done so a rerun redoes them")
    return group[key_path(key)], starts, ends
