"""Integrity checks of a feature store, and the repairs that are safe to make.

``check_store`` compares each set's ledger with its data: array lengths against the committed
counts, offsets, names (empty, duplicated), NaN/Inf or missing chunks (values use a NaN fill, so a
lost chunk reads as NaN), ledger failures that contradict done clips, and write-ahead segments
left behind by a process that died. Chunk files of the committed rows are also looked for on disk
where a lost chunk would read as a plausible value: a lost ``offsets`` chunk (its fill, 0, hides where
clips' frames lie), a lost ``times`` chunk of a set that records times (its fill, NaN, reads as
"time unknown") and a lost chunk of per-frame extras (see :mod:`.frame_extras_check`).
``repair=True`` (``mer store repair``) consolidates pending segments, cuts uncommitted tails, and
drops from the ledger every clip whose data is missing (a lost array, arrays shorter than the
ledger, a lost chunk of names, offsets or times, vectors that read as NaN/Inf, lost frame extras),
so a rerun redoes exactly those clips; the data of every other clip is left as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .durable import chunk_paths, sync_set
from .featureset import FeatureSet
from .featurestore import FeatureStore
from .frame_extras import COUNT_ATTR as FX_COUNT
from .frame_extras import KEYS_ATTR as FX_KEYS
from .frame_extras import truncate as truncate_frame_extras
from .frame_extras_check import check_frame_extras
from .layout import ATTR
from .lock import locked
from .segments import UNREADABLE_ERRORS, list_segments, read_segment_names
from .supersede import REDONE, committed_names, finish_redone

log = logging.getLogger(__name__)

SCAN_ROWS = 1 << 15  # rows per block when scanning values, to bound memory


@dataclass
class Problem:
    """One finding: which set, which clip (if any), what is wrong, and whether it was fixed."""

    key: str
    problem: str
    clip: str | None = None
    fixed: bool = False

    def __str__(self) -> str:
        where = f"{self.key}" + (f" clip {self.clip!r}" if self.clip else "")
        return f"{where}: {self.problem}" + (" [fixed]" if self.fixed else "")


def check_store(store: FeatureStore, keys: list[str] | None = None, *, repair: bool = False) -> list[Problem]:
    """Check every set (or ``keys``); with ``repair`` apply the safe fixes. Returns the findings."""
    problems: list[Problem] = []
    for key in keys or store.sets():
        problems.extend(check_set(store[key], repair=repair))
    return problems


def check_set(fs: FeatureSet, *, repair: bool = False) -> list[Problem]:
    """Check one feature set; see the module docstring."""
    out: list[Problem] = []
    if repair:
        with locked(fs.path, what=f"feature set {fs.key!r}"):
            out.extend(_check_structure(fs, repair=True))
            group = fs.group(mode="r+")
            meta = dict(group.attrs[ATTR])
            if REDONE in meta and all(a in group for a in _required(meta["level"])):
                finish_redone(group, meta)  # redone clips committed, not yet moved to their final rows
    else:
        found = _check_structure(fs, repair=False)
        if found:  # the other checks would index arrays that are not there
            return found
    pending = list_segments(fs.pending_dir)
    for path in pending:
        try:
            read_segment_names(path)
        except UNREADABLE_ERRORS as exc:
            out.append(Problem(fs.key, f"write-ahead segment {path.name} is unreadable ({type(exc).__name__}: {exc}); "
                               + ("set aside in _unreadable/: its clips are not done, the next run redoes them"
                                  if repair else "`mer store repair` sets it aside and the next run redoes its clips"),
                               fixed=repair))
    if pending:
        merged = fs.consolidate() if repair else 0
        out.append(Problem(fs.key, f"{len(pending)} write-ahead segments not consolidated"
                           + (f" ({merged} clips merged)" if repair else " (the next run or `mer store repair` merges them)"),
                           fixed=repair))
    if repair:
        with locked(fs.path, what=f"feature set {fs.key!r}"):
            out.extend(_check_arrays(fs, repair=True))
            sync_set(fs.group(mode="r"))  # the repair's rewrites and its ledger reach the disk
    else:
        out.extend(_check_arrays(fs, repair=False))
    return out


def _required(level: str) -> tuple[str, ...]:
    return ("names", "values") if level == "utt" else ("names", "values", "offsets", "times")


def _check_structure(fs: FeatureSet, *, repair: bool) -> list[Problem]:
    """Arrays missing, or shorter than the ledger's counts: the data of (some) committed clips is gone.

    ``repair`` drops those clips from the ledger: with an array missing, the set's arrays are made
    anew and empty (provenance and failures kept); with arrays cut short, the counts shrink to the
    clips whose data is all there. Either way a rerun redoes exactly the dropped clips.
    """
    group = fs.group(mode="r+" if repair else "r")
    meta = dict(group.attrs[ATTR])
    n, f, level = int(meta["n_rows"]), int(meta["n_frames"]), meta["level"]
    missing = [a for a in _required(level) if a not in group]
    if missing:
        names = [] if "names" in missing else [str(x) for x in group["names"][:n] if x != ""]
        problem = (f"array {', '.join(missing)} missing: the data of all {len(names) if names else n} "
                   "committed clips is lost")
        if repair:
            _reset_arrays(fs, group, meta)
            problem += "; dropped from the ledger so a rerun redoes them"
        return [Problem(fs.key, problem, fixed=repair)]

    have_rows = group["names"].shape[0]
    if level == "utt":
        have_rows = min(have_rows, group["values"].shape[0])
    else:
        have_rows = min(have_rows, group["offsets"].shape[0] - 1)
    if have_rows >= n and (level == "utt" or min(group["values"].shape[0], group["times"].shape[0]) >= f):
        return []
    if not repair:
        short = [f"{a} has {group[a].shape[0]} rows" for a in _required(level)]
        return [Problem(fs.key, f"{', '.join(short)} but the ledger commits {n} clips"
                        + (f" / {f} frames" if level == "frame" else "") + ": data lost")]
    keep = max(0, have_rows)
    if level == "frame":  # keep the clips whose frames are all there
        frames = min(group["values"].shape[0], group["times"].shape[0])
        offsets = group["offsets"][: keep + 1]
        if offsets[0] != 0:
            keep = 0
        else:
            falls = np.flatnonzero(np.diff(offsets) < 0)  # offsets beyond a fall are garbage
            if len(falls):
                keep = int(falls[0])
            keep = int(np.searchsorted(offsets[: keep + 1], frames, side="right")) - 1
        f = int(offsets[keep]) if keep > 0 else 0
    dropped = _shrink_ledger(group, meta, keep, f)
    shown = ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else "")
    return [Problem(fs.key, f"arrays shorter than the ledger: {n - keep} committed clips have no data "
                    f"({shown or 'names lost too'}); dropped from the ledger so a rerun redoes them", fixed=True)]


def _shrink_ledger(group, meta: dict, keep: int, f: int) -> list[str]:
    """Commit only the first ``keep`` rows / ``f`` frames and cut the arrays to them; returns the
    clips dropped from the ledger (a rerun redoes them)."""
    n = int(meta["n_rows"])
    tail = committed_names(group["names"], {**meta, "n_rows": min(n, group["names"].shape[0])})[keep:]
    meta.update(n_rows=keep, n_frames=f)
    if REDONE in meta:  # a redone clip whose new row is cut off keeps its old row
        meta[REDONE] = [[a, b] for a, b in meta[REDONE] if max(a, b) < keep]
    kept = committed_names(group["names"], meta)
    meta["n_superseded"] = int((kept == "").sum())
    still = set(kept.tolist())
    dropped = list(dict.fromkeys(str(x) for x in tail if x != "" and x not in still))
    _truncate_to_ledger(group, meta)
    group.attrs[ATTR] = meta
    return dropped


def _lost_chunks(fs: FeatureSet, arr, lo: int, hi: int) -> list[tuple[int, int]]:
    """First-axis ``[start, end)`` ranges (clipped to ``[lo, hi)``) of the chunks of ``arr`` holding
    rows ``lo .. hi`` that are not on disk (local stores only)."""
    size = int(arr.metadata.chunk_grid.chunk_shape[0])
    lost = []
    for i in range(lo // size, (hi - 1) // size + 1 if hi > lo else 0):
        a, b = max(lo, i * size), min(hi, (i + 1) * size)
        if not all(p.is_file() for p in chunk_paths(arr, [(a, b)], fs.path)):
            lost.append((a, b))
    return lost


def _truncate_to_ledger(group, meta: dict) -> None:
    """Cut every array to the ledger's counts (per-clip extras shorter than that grow with NaN)."""
    n, f = int(meta["n_rows"]), int(meta["n_frames"])
    sizes = {"names": n, "values": n} if meta["level"] == "utt" else {
        "names": n, "offsets": n + 1, "values": f, "times": f}
    sizes.update({f"clip_{k}": n for k in meta.get("extras", []) if f"clip_{k}" in group})
    for name, size in sizes.items():
        arr = group[name]
        if arr.shape[0] != size:
            arr.resize((size,) + arr.shape[1:])
    truncate_frame_extras(group, meta, n)


def _reset_arrays(fs: FeatureSet, group, meta: dict) -> None:
    """Make the set's arrays anew and empty; keep provenance and the failures of clips not done."""
    import shutil

    from .layout import create_arrays

    for child in list(fs.path.iterdir()):
        if child.is_dir() and not child.name.startswith(("_", ".")):
            shutil.rmtree(child)
    group = fs.group(mode="r+")
    create_arrays(group, meta["level"], int(meta["dim"]), meta["dtype"])
    if meta["level"] == "frame":
        group["offsets"][0] = 0
    meta.update({"n_rows": 0, "n_frames": 0, "n_superseded": 0, "extras": [], "last_consolidation": [],
                 FX_KEYS: [], FX_COUNT: 0})
    meta.pop(REDONE, None)
    group.attrs[ATTR] = meta


def _check_arrays(fs: FeatureSet, *, repair: bool) -> list[Problem]:
    out: list[Problem] = []
    group = fs.group(mode="r+" if repair else "r")
    meta = dict(group.attrs[ATTR])
    n, f, level, dim = int(meta["n_rows"]), int(meta["n_frames"]), meta["level"], int(meta["dim"])
    names_arr, values = group["names"], group["values"]

    lengths = {"names": (names_arr.shape[0], n)}
    if level == "utt":
        lengths["values"] = (values.shape[0], n)
    else:
        lengths.update(values=(values.shape[0], f), times=(group["times"].shape[0], f),
                       offsets=(group["offsets"].shape[0], n + 1))
    for key in meta.get("extras", []):
        if f"clip_{key}" in group:
            lengths[f"clip_{key}"] = (group[f"clip_{key}"].shape[0], n)
    for arr_name, (have, want) in list(lengths.items()):
        if arr_name.startswith("clip_") and have < want:  # per-clip numbers lost: they read as "not recorded"
            out.append(Problem(fs.key, f"{arr_name} has {have} rows, the ledger {want}: per-clip numbers of "
                               f"{want - have} clips lost" + (" (now NaN: not recorded)" if repair else ""),
                               fixed=repair))
            if repair:
                group[arr_name].resize((want,))
            del lengths[arr_name]
    for arr_name, (have, want) in lengths.items():
        if have > want:
            out.append(Problem(fs.key, f"{arr_name} has {have - want} uncommitted rows beyond the ledger "
                               "(interrupted consolidation)", fixed=repair))
            if repair:
                group[arr_name].resize((want,) + group[arr_name].shape[1:])
        elif have < want:
            out.append(Problem(fs.key, f"{arr_name} has {have} rows but the ledger commits {want}: data lost"))
    if values.shape[1] != dim:
        out.append(Problem(fs.key, f"values have dim {values.shape[1]}, ledger says {dim}"))
    if any(p.problem.endswith("data lost") for p in out):
        return out  # the remaining checks would index past the arrays

    names = committed_names(names_arr, meta)  # rows superseded by the last commit read "" too
    blank = int((names == "").sum())
    if blank != int(meta.get("n_superseded", 0)):
        lost = blank - int(meta.get("n_superseded", 0))
        out.append(Problem(fs.key, f"{blank} rows without a name, ledger expects {meta.get('n_superseded', 0)}"
                           + (f" (names lost: {lost} clips dropped from the ledger so a rerun redoes them)"
                              if repair else ""), fixed=repair))
        if repair:
            meta["n_superseded"] = blank
            group.attrs[ATTR] = meta
    uniq, counts = np.unique(names[names != ""], return_counts=True)
    for dup in uniq[counts > 1]:
        out.append(Problem(fs.key, f"clip appears {int(counts[uniq == dup][0])} times", clip=str(dup)))

    if level == "frame":
        lost = _lost_chunks(fs, group["offsets"], 0, n + 1) if n else []  # no clip: [0] is unwritten fill
        if lost:  # fill 0: where the frames of those clips lie is unknown; keep the clips before
            keep = max(0, lost[0][0] - 1)
            problem = (f"offsets chunk(s) of rows {', '.join(f'{a}-{b - 1}' for a, b in lost)} missing: "
                       f"the frames of clips from row {keep} on cannot be located")
            if repair:
                dropped = _shrink_ledger(group, meta, keep, int(group["offsets"][keep]) if keep else 0)
                problem += f"; {len(dropped)} clips dropped from the ledger so a rerun redoes them"
            out.append(Problem(fs.key, problem, fixed=repair))
            return out
        offsets = group["offsets"][: n + 1]
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != f:
            out.append(Problem(fs.key, f"offsets are not monotone from 0 to {f} frames"))
            return out
    reasons = dict.fromkeys(_nonfinite_rows(group, level, n, f), "vectors missing or NaN/Inf")
    lost = _lost_chunks(fs, group["times"], 0, f) if level == "frame" else []
    if lost and len(lost) < -(-f // int(group["times"].metadata.chunk_grid.chunk_shape[0])):
        # the set records times (some chunks are there: an all-NaN chunk is never written, so a set
        # without times, e.g. text tokens, has none); a lost one would read as "time unknown"
        for a, b in lost:
            for row in range(int(np.searchsorted(offsets, a, side="right")) - 1,
                             int(np.searchsorted(offsets, b - 1, side="right"))):
                reasons.setdefault(row, "frame times missing (a lost chunk of times)")
    notes, fx_bad = check_frame_extras(fs.path, group, meta, offsets if level == "frame" else None, repair=repair)
    out.extend(Problem(fs.key, text, fixed=fixed) for text, fixed in notes)
    for row, why in fx_bad.items():
        reasons.setdefault(row, why)
    bad_rows = sorted(reasons)
    for row in bad_rows:
        if names[row] == "":
            continue
        out.append(Problem(fs.key, reasons[row] + ("; marked not done so a rerun redoes it" if repair else ""),
                           clip=str(names[row]), fixed=repair))
        if repair:
            names_arr[int(row)] = ""
    if repair and bad_rows:
        meta["n_superseded"] = int((committed_names(names_arr, meta) == "").sum())

    done = set(names[names != ""].tolist())
    contradicted = [k for k in meta.get("failures", {}) if k in done]
    for clip in contradicted:
        out.append(Problem(fs.key, "recorded as failed but also done", clip=clip, fixed=repair))
    if repair and (contradicted or bad_rows):
        meta["failures"] = {k: v for k, v in meta["failures"].items() if k not in done}
        group.attrs[ATTR] = meta
    return out


def _nonfinite_rows(group, level: str, n: int, f: int) -> list[int]:
    """Rows (utterance level) or clips (frame level) holding NaN/Inf, scanned block by block."""
    values = group["values"]
    if level == "utt":
        bad: list[int] = []
        for lo in range(0, n, SCAN_ROWS):
            block = values[lo:min(n, lo + SCAN_ROWS)]
            bad.extend((lo + np.flatnonzero(~np.isfinite(block).all(axis=1))).tolist())
        return bad
    offsets = group["offsets"][: n + 1]
    bad_frames: list[np.ndarray] = []
    for lo in range(0, f, SCAN_ROWS):
        block = values[lo:min(f, lo + SCAN_ROWS)]
        bad_frames.append(lo + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    frames = np.concatenate(bad_frames) if bad_frames else np.zeros(0, np.int64)
    return sorted(set(np.searchsorted(offsets, frames, side="right") - 1)) if len(frames) else []
