"""Issue 13, item 1: redoing clips of a set that records per-clip extras, on real Zarr stores.

The sets look like the extraction stage's: an utterance-level speech set recording hf-speech's
``windows`` / ``padded`` / ``resampled_from`` and a frame-level CLIP set recording ``faces``; the
clips are written through :meth:`FeatureSet.writer` with ``extras=`` as ``pipeline/stage.py``
does. A redo is what ``mer extract --only LIST --force`` and ``--force`` with unchanged provenance
do (the set is kept, the selected clips are written again), or two overlapping runs writing the
same clips. Afterwards every clip is there once with its latest vectors, frames, times and extras
(equal to a clean run that wrote each clip once), a rerun has nothing to do, ``check`` is clean
and ``repair`` changes nothing. A redo that is written but not committed stays invisible: readers
see the old committed values until the commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S
from mer.store import FeatureStore, Provenance
from mer.store.check import check_store
from mer.store.featureset import FeatureSet
from mer.store.segments import list_segments

DIM = 2  # small rows: a values chunk is 65,536 x 2 float16 = 256 KiB (see the file-size fault below)
SETS = {
    "utt": ("audio/hubert-utt", ("windows", "padded", "resampled_from")),
    "frame": ("video/clip-faces", ("faces",)),
}
Version = dict[str, int]  # clip -> which run wrote its latest vectors


def _clip(name: str, version: int, level: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
    """Vectors, frame times and extras of ``name`` as run ``version`` computes them (deterministic)."""
    seed = zlib.crc32(f"{name}/{version}".encode())
    rng = np.random.default_rng(seed)
    if level == "utt":
        vec = rng.standard_normal(DIM)
        times = None
        # hf-speech records windows for long clips, padded for short ones; a redo may differ
        extras = {"windows": float(1 + seed % 4)} if seed % 3 else {"padded": 1.0}
        if seed % 5 == 0:
            extras["resampled_from"] = 44100.0
    else:
        t = 1 + seed % 6
        vec = rng.standard_normal((t, DIM))
        times = (np.arange(t) * 0.5 + version).astype(np.float32)
        extras = {"faces": float(seed % (t + 1))} if seed % 4 else {}  # no face crop recorded: NaN
    return vec, times, extras


def _write(fs: FeatureSet, names: list[str], version: int, *, flush_rows: int = 3) -> None:
    """One run writing ``names`` (as the stage does: a buffered writer, closed at the end)."""
    with fs.writer(flush_rows=flush_rows) as w:
        for name in names:
            vec, times, extras = _clip(name, version, fs.level)
            w.add(name, vec, times=times, extras=extras)


def _create(store: FeatureStore, level: str, **prov: object) -> FeatureSet:
    key, _ = SETS[level]
    return store.create(key, level=level, dim=DIM, provenance=Provenance(extractor="synthetic", **prov))


def _clean(tmp: Path, level: str, want: Version) -> FeatureSet:
    """A store made by one clean run that writes each clip once, with the version it should have."""
    fs = _create(FeatureStore(tmp), level)
    with fs.writer(flush_rows=1000) as w:
        for name, version in want.items():
            vec, times, extras = _clip(name, version, level)
            w.add(name, vec, times=times, extras=extras)
    return fs


def _assert_like_clean(fs: FeatureSet, clean: FeatureSet) -> None:
    """Same clips (each once), same vectors, frames, times and per-clip extras as the clean run."""
    names = fs.names()
    assert len(names) == len(set(names)), "every clip exactly once"
    assert sorted(names) == sorted(clean.names())
    assert fs.index().keys() == clean.index().keys()
    got, want = fs.read(names), clean.read(names)
    if fs.level == "utt":
        np.testing.assert_array_equal(got, want)
    else:
        for name, g, w in zip(names, got, want):
            np.testing.assert_array_equal(g, w, err_msg=name)
        for name, g, w in zip(names, fs.read_times(names), clean.read_times(names)):
            np.testing.assert_array_equal(g, w, err_msg=name)
    _, keys = SETS[fs.level]
    assert set(fs.meta()["extras"]) <= set(keys)
    for key in clean.meta()["extras"]:
        np.testing.assert_array_equal(fs.read_extra(key, names), clean.read_extra(key, names), err_msg=key)
    whole = fs.read()  # the whole-set read (no names) agrees too
    assert len(whole) == len(names)


def _assert_healthy(store: FeatureStore, fs: FeatureSet, table: list[str]) -> None:
    """A rerun has nothing to do, ``check`` is clean, ``repair`` finds nothing and changes nothing."""
    assert [n for n in table if n not in fs.done_names()] == []
    assert fs.failures() == {} and list_segments(fs.pending_dir) == []
    assert check_store(store) == []
    assert check_store(store, repair=True) == []
    assert check_store(store) == []


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_only_list_force_then_force_then_rerun(tmp_path, level):
    table = [f"c{i:02d}" for i in range(12)]
    store = FeatureStore(tmp_path / "s.zarr")
    fs = _create(store, level)
    _write(fs, table, 1)
    want = dict.fromkeys(table, 1)

    # `--only LIST --force`: the set is kept (same provenance), the listed clips are written again
    redo = ["c03", "c07", "c08", "c11"]
    _write(_create(store, level), redo, 2, flush_rows=2)
    want.update(dict.fromkeys(redo, 2))
    _assert_like_clean(fs, _clean(tmp_path / "clean2.zarr", level, want))
    _assert_healthy(store, fs, table)

    # `--force` with unchanged provenance over a grown table: every selected clip again, new ones too
    table += ["c12", "c13", "c14"]
    _write(_create(store, level), table, 3, flush_rows=4)
    want = dict.fromkeys(table, 3)
    _assert_like_clean(fs, _clean(tmp_path / "clean3.zarr", level, want))

    # a plain rerun (resume) skips everything; the store checks clean and repairs to itself
    fs = _create(store, level)
    _write(fs, [n for n in table if n not in fs.done_names()], 4)
    _assert_healthy(store, fs, table)
    _assert_like_clean(fs, _clean(tmp_path / "clean4.zarr", level, want))


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_two_overlapping_runs_write_the_same_clips(tmp_path, level):
    table = [f"c{i:02d}" for i in range(12)]
    store = FeatureStore(tmp_path / "s.zarr")
    fs = _create(store, level)
    _write(fs, table[:5], 1)
    # two runs start at once: both see c00-c04 done and both extract c05-c11; each commits a
    # segment every few clips and merges it at once, so each run's clips arrive as redos of clips
    # the other run has already committed
    a, b = (_create(store, level), _create(store, level))
    todo = [n for n in table if n not in a.done_names()]
    assert todo == table[5:] and todo == [n for n in table if n not in b.done_names()]
    wa = a.writer(flush_rows=2, consolidate_every=1)
    wb = b.writer(flush_rows=3, consolidate_every=1)
    for name in todo:
        wa.add(name, *_clip(name, 1, level))
        wb.add(name, *_clip(name, 2, level))
    wb.close()
    wa.close()
    # a merged [c05 c06], b [c05 c06 c07], a [c07 c08], a [c09 c10], b [c08 c09 c10], b [c11], a [c11]:
    # the latest merge of each clip wins
    latest = {"c05": 2, "c06": 2, "c07": 1, "c08": 2, "c09": 2, "c10": 2, "c11": 1}
    want = {**dict.fromkeys(table[:5], 1), **latest}
    _assert_like_clean(fs, _clean(tmp_path / "clean.zarr", level, want))
    _assert_healthy(store, fs, table)


# ---- a redo written but not committed ----------------------------------------------------------
BIG = 1 << 20  # the set's metadata (zarr.json, the commit) is made larger than any chunk file
LIMIT = 512 * 1024  # every chunk of these sets is <= 256 KiB, so only the commit fails
CHILD = """
import signal, resource, sys
import numpy as np
from mer.store import FeatureStore, Provenance
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
store, key, level, payload, blob = sys.argv[1:]
fs = FeatureStore(store).create(key, level=level, dim={dim},
                                provenance=Provenance(extractor="synthetic", config={{"blob": "x" * int(blob)}}))
z = np.load(payload, allow_pickle=True)
with fs.writer(flush_rows=2) as w:
    for name, vec, times, extras in z["clips"]:
        w.add(name, vec, times=times, extras=extras)
"""


def _run_limited_writer(tmp_path: Path, store: FeatureStore, level: str, names: list[str], version: int
                        ) -> subprocess.CompletedProcess[str]:
    """A run redoing ``names`` in a process whose files may not grow past LIMIT: its segments
    (small) are written, the arrays are appended to, and the commit fails with EFBIG."""
    payload = tmp_path / "payload.npy.npz"
    clips = np.empty(len(names), dtype=object)
    clips[:] = [(n, *_clip(n, version, level)) for n in names]
    np.savez(payload, clips=clips)
    key, _ = SETS[level]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = CHILD.format(limit=LIMIT, dim=DIM)
    return subprocess.run([sys.executable, "-c", code, str(store.path), key, level, str(payload), str(BIG)],
                          capture_output=True, text=True, timeout=HANG_S, env=env, check=False)


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_uncommitted_redo_is_invisible_to_readers(tmp_path, level):
    table = [f"c{i:02d}" for i in range(10)]
    store = FeatureStore(tmp_path / "s.zarr")
    fs = _create(store, level, config={"blob": "x" * BIG})
    _write(fs, table, 1)
    assert (fs.path / "zarr.json").stat().st_size > LIMIT
    redo = ["c01", "c04", "c05", "c09"]
    res = _run_limited_writer(tmp_path, store, level, redo + ["c10"], 2)
    assert res.returncode == 1, res.stderr

    # the redo is durable in write-ahead segments but not committed: readers see the old run
    assert fs.done_names() == set(table) | {"c10"}
    _assert_like_clean(fs, _clean(tmp_path / "before.zarr", level, dict.fromkeys(table, 1)))
    assert "File too large" in res.stderr and "IndexError" not in res.stderr, res.stderr
    found = check_store(store)
    assert found and all("not consolidated" in p.problem or "uncommitted rows" in p.problem for p in found), found

    # the next run (or repair) merges the segments: now the redo shows, exactly once
    fixed = check_store(store, repair=True)
    assert all(p.fixed for p in fixed), fixed
    want = {**dict.fromkeys(table, 1), **dict.fromkeys(redo + ["c10"], 2)}
    _assert_like_clean(fs, _clean(tmp_path / "after.zarr", level, want))
    _assert_healthy(store, fs, table + ["c10"])


# ---- a store wedged by the old bug -------------------------------------------------------------
def test_store_wedged_by_the_old_redo_bug_is_repaired(tmp_path):
    """What the old consolidation left when a redo with extras raised IndexError: the redo's
    segment still pending, the redone rows already overwritten in place, the new clips' rows
    appended beyond the ledger. ``repair`` (and the next run) merges it; nothing raises."""
    level = "utt"
    table = [f"c{i:02d}" for i in range(8)]
    store = FeatureStore(tmp_path / "s.zarr")
    fs = _create(store, level)
    _write(fs, table, 1)
    redo, new = ["c02", "c06"], ["c08"]
    w = fs.writer(flush_rows=100, consolidate_every=0)
    for name in redo + new:
        w.add(name, *_clip(name, 2, level))
    w.flush()  # a committed segment, not merged
    g = fs.group(mode="r+")
    index = fs.index()
    for name in redo:  # the old code's in-place write of the redone vectors
        g["values"][index[name]] = _clip(name, 2, level)[0].astype(np.float16)
    g["values"].resize((9, DIM))  # ... and its uncommitted append of the new clip
    g["values"][8] = _clip("c08", 2, level)[0].astype(np.float16)
    g["names"].resize((9,))
    g["names"][8] = "c08"

    fixed = check_store(store, repair=True)
    assert all(p.fixed for p in fixed), fixed
    want = {**dict.fromkeys(table, 1), **dict.fromkeys(redo + new, 2)}
    _assert_like_clean(fs, _clean(tmp_path / "clean.zarr", level, want))
    _assert_healthy(store, fs, table + new)
    _write(_create(store, level), redo, 3)  # and the set takes further redos
    want.update(dict.fromkeys(redo, 3))
    _assert_like_clean(fs, _clean(tmp_path / "clean3.zarr", level, want))
    _assert_healthy(store, fs, table + new)


# ---- a consolidation that died between its two commits -------------------------------------------
@pytest.mark.parametrize("level", ["utt", "frame"])
def test_redo_killed_between_its_two_commits_is_finished(tmp_path, level):
    """The first commit (new counts + the ``redone`` pairs) is written, the rows are not yet in their
    final state: readers already see the redo, ``check`` is clean, and the next consolidation (or
    ``repair``) finishes it."""
    table = [f"c{i:02d}" for i in range(8)]
    store = FeatureStore(tmp_path / "s.zarr")
    fs = _create(store, level)
    _write(fs, table, 1)
    before = {n: fs.read([n])[0].copy() for n in table}
    rows_before = fs.index()
    redo = ["c01", "c06"]
    _write(fs, redo, 2)
    want = {**dict.fromkeys(table, 1), **dict.fromkeys(redo, 2)}
    clean = _clean(tmp_path / "clean.zarr", level, want)
    _assert_like_clean(fs, clean)

    # put the set back to the moment right after the first commit of that redo
    g = fs.group(mode="r+")
    meta = dict(g.attrs["mer"])
    n = int(meta["n_rows"])
    appended = {str(x): n - len(redo) + j for j, x in enumerate(redo)}
    meta["redone"] = [[rows_before[k], appended[k]] for k in redo]
    for k in redo:
        if level == "utt":  # the old rows still hold the old vectors
            g["values"][rows_before[k]] = before[k]
        else:  # the old rows are still named
            g["names"][rows_before[k]] = k
    g.attrs["mer"] = meta

    _assert_like_clean(fs, clean)  # the redo is committed: readers follow the pairs
    assert check_store(store) == []
    assert check_store(store, repair=True) == []
    assert "redone" not in fs.meta()
    _assert_like_clean(fs, clean)
    _assert_healthy(store, fs, table)
    if level == "utt":
        assert fs.names() == table  # a redone utterance-level clip keeps its row
