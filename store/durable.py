"""Make a consolidation's writes durable before its commit, and the commit before segments go.

zarr-python's ``LocalStore`` writes each chunk (and each ``zarr.json``) to a temporary file and
renames it into place: atomic against a process crash, but neither the file's bytes nor the rename
reach the disk before the kernel flushes them. After a power loss the commit (the group's
``zarr.json``) could be on disk while a chunk it counts is not, and the write-ahead segment that
held the clip is already deleted. So a consolidation:

1. fsyncs the chunk files its append (or row rewrite) touched, every array's ``zarr.json`` (a
   resize rewrites it) and every directory from those files up to the set directory (new chunk
   directories and the renames live in them): :func:`sync_rows`;
2. commits (rewrites the group's ``zarr.json``);
3. fsyncs the group's ``zarr.json`` and the set directory: :func:`sync_commit`;
4. only then deletes the merged segments.

The chunk keys are computed from each array's own chunk shape and chunk key encoding (read from
its metadata), so exactly the chunks of the given row ranges are synced, not the whole set.
:data:`FSYNC` switches it off (measured cost in ``store/README.md``); stores that are not on the
local file system are left to their backend.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import product
from pathlib import Path

import zarr

from .segments import fsync_path

log = logging.getLogger(__name__)

FSYNC = True  # False: skip every fsync of a consolidation (faster; a power loss may then cost committed clips)


def _root(group: zarr.Group) -> Path | None:
    """The group's directory on the local file system, or ``None`` for other stores."""
    root = getattr(group.store, "root", None)
    if root is None:
        return None
    return Path(root) / group.path if group.path else Path(root)


def chunk_paths(arr: zarr.Array, rows: Iterable[tuple[int, int]], base: Path) -> list[Path]:
    """Files of the chunks of ``arr`` holding first-axis rows ``[lo, hi)`` of each range (every chunk
    along the other axes), under the array's directory in ``base``. Ranges are clipped to the shape."""
    shape, chunks = arr.shape, arr.metadata.chunk_grid.chunk_shape  # type: ignore[union-attr]
    encoding = arr.metadata.chunk_key_encoding
    first: set[int] = set()
    for lo, hi in rows:
        lo, hi = max(0, int(lo)), min(int(hi), shape[0])
        if hi > lo:
            first.update(range(lo // chunks[0], (hi - 1) // chunks[0] + 1))
    rest = [range(-(-s // c)) for s, c in zip(shape[1:], chunks[1:])]
    array_dir = base / arr.path.rsplit("/", 1)[-1]
    return [array_dir / encoding.encode_chunk_key((i, *other)) for i in sorted(first) for other in product(*rest)]


def sync_rows(group: zarr.Group, ranges: dict[str, list[tuple[int, int]]]) -> list[Path]:
    """fsync the chunks of ``ranges`` (array name or path -> first-axis ``[lo, hi)`` ranges written),
    the ``zarr.json`` of every array of the group and of its sub-groups one level down (the
    ``frame_extras/`` arrays), and the directories holding them up to the group's.

    Call it after writing and before the commit. Chunks that are not on disk are skipped (zarr does
    not store a chunk that is all fill value: it reads back as the fill). Returns the paths synced,
    files first, in order (empty when :data:`FSYNC` is off or the store is not local).
    """
    base = _root(group)
    if not FSYNC or base is None:
        return []
    files: list[Path] = []
    dirs: set[Path] = {base}
    # every array's (and sub-group's, e.g. frame_extras/) metadata; not _pending/ and the like
    for meta_file in sorted([*base.glob("*/zarr.json"), *base.glob("*/*/zarr.json")]):
        rel = meta_file.parent.relative_to(base).parts
        if not any(part.startswith(("_", ".")) for part in rel):
            files.append(meta_file)
            dirs.update(base.joinpath(*rel[:i]) for i in range(1, len(rel) + 1))
    for name, rows in ranges.items():  # names may be paths into a sub-group ("frame_extras/spans")
        if not rows or not (base / name / "zarr.json").is_file():
            continue
        for path in chunk_paths(group[name], rows, (base / name).parent):
            if not path.is_file():
                continue
            files.append(path)
            parent = path.parent
            while parent != base and base in parent.parents:
                dirs.add(parent)
                parent = parent.parent
    ordered = files + sorted(dirs, key=lambda p: len(p.parts), reverse=True)  # deepest directories first
    for path in ordered:
        fsync_path(path)
    log.debug("fsynced %d files and %d directories of %s: %s", len(files), len(dirs), base,
              [p.relative_to(base).as_posix() for p in ordered])
    return ordered


def sync_commit(group: zarr.Group) -> list[Path]:
    """fsync the group's ``zarr.json`` (the commit) and its directory; call it after the commit and
    before deleting the merged segments. Returns the paths synced."""
    base = _root(group)
    if not FSYNC or base is None:
        return []
    ordered = [base / "zarr.json", base]
    for path in ordered:
        fsync_path(path)
    return ordered


def sync_set(group: zarr.Group) -> list[Path]:
    """fsync a whole set after ``mer store repair``: every chunk and array ``zarr.json`` under it
    (not ``_pending/`` and the like), their directories deepest first, then the group's ``zarr.json``
    (the ledger) and the set directory last. A repair rewrites and deletes chunks in several arrays
    and shrinks the ledger; a file that was not changed costs little to fsync. Returns the paths
    synced, in order (empty when :data:`FSYNC` is off or the store is not local)."""
    base = _root(group)
    if not FSYNC or base is None:
        return []
    data: list[Path] = []
    metas: list[Path] = []
    dirs: set[Path] = set()
    for path in base.rglob("*"):
        rel = path.relative_to(base).parts
        if any(part.startswith(("_", ".")) for part in rel):
            continue
        if path.is_dir():
            dirs.add(path)
        elif path.is_file() and len(rel) > 1:
            (metas if path.name == "zarr.json" else data).append(path)
    ordered = (sorted(data) + sorted(metas) + sorted(dirs, key=lambda p: (-len(p.parts), p))
               + [base / "zarr.json", base])
    for path in ordered:
        fsync_path(path)
    log.debug("fsynced %d files and %d directories of %s: %s", len(data) + len(metas) + 1, len(dirs) + 1, base,
              [p.relative_to(base).as_posix() for p in ordered])
    return ordered
