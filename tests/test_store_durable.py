"""Durability of a consolidation (issue 13, item 6) on real Zarr stores.

A consolidation fsyncs the chunk files its append touched (and only those), every array's
``zarr.json`` and the directories up to the set's before its commit, so that a power loss cannot
leave a committed clip without its chunk; and ``mer store check`` finds a committed chunk that is
missing anyway (deleted here by hand), of any array, and ``repair`` makes the next run redo its clips.

Sets use D = 32,768 float16, so ``values`` (and frame ``times``) chunks hold 64 rows and a small
append crosses a chunk boundary.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mer.store import FeatureStore, Provenance
from mer.store.check import check_store
from mer.store.durable import sync_rows

D = 32768  # 64 rows per values chunk (the 4 MiB target at float16)
FRAMES = 3


def vec(i: int, level: str) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.standard_normal(D if level == "utt" else (FRAMES, D)).astype(np.float16).astype(np.float32)


def write(fs, names: list[str], level: str) -> None:
    with fs.writer(flush_rows=1000) as w:
        for name in names:
            i = int(name[1:])
            if level == "utt":
                w.add(name, vec(i, level), extras={"k": float(i)})
            else:
                w.add(name, vec(i, level), times=np.arange(FRAMES, dtype=np.float32) + i)


def names(a: int, b: int) -> list[str]:
    return [f"c{i:03d}" for i in range(a, b)]


def files(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of a set but its segments: relative path -> (inode, mtime, size)."""
    out = {}
    for p in root.rglob("*"):
        if p.is_file() and "_pending" not in p.parts:
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def synced(caplog) -> list[list[str]]:
    """The paths each ``sync_rows`` call of the consolidation fsynced (relative to the set)."""
    return [list(r.args[-1]) for r in caplog.records if r.name == "mer.store.durable"]


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_consolidation_fsyncs_exactly_the_chunks_its_append_touched(tmp_path, caplog, level):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = store.create(f"audio/{level}", level=level, dim=D, provenance=Provenance(extractor="x"))
    first = 50 if level == "utt" else 10  # utt: rows 0-49 | frame: frames 0-29
    write(fs, names(0, first), level)
    before = files(fs.path)
    with caplog.at_level(logging.DEBUG, logger="mer.store.durable"):
        write(fs, names(first, first + 30 if level == "utt" else first + 20), level)  # rows 50-79 | frames 30-89
    after = files(fs.path)
    calls = synced(caplog)
    assert len(calls) == 1, calls
    paths = calls[0]
    chunks = {p for p in paths if "/c/" in p or p.endswith("/c")}
    if level == "utt":  # chunk 0 (rows 50-63 rewritten) and chunk 1 (rows 64-79 new)
        want = {"values/c/0/0", "values/c/1/0", "names/c/0", "names/c/1", "clip_k/c/0"}
        want_dirs = {"values/c/0", "values/c/1", "values/c", "names/c", "clip_k/c"}
    else:  # frames 30-89: values/times chunks 0 and 1; offsets and names hold 65,536 rows a chunk
        want = {"values/c/0/0", "values/c/1/0", "times/c/0", "times/c/1", "offsets/c/0", "names/c/0"}
        want_dirs = {"values/c/0", "values/c/1", "values/c", "times/c", "offsets/c", "names/c"}
    assert chunks == want | want_dirs, sorted(chunks)
    arrays = {p.split("/")[0] for p in want}
    assert {f"{a}/zarr.json" for a in arrays} | arrays | {"."} <= set(paths)
    # every file the merge wrote before its commit is among them (the commit itself is synced after)
    changed = {p for p, stamp in after.items() if before.get(p) != stamp} - {"zarr.json"}
    assert changed and changed <= set(paths), sorted(changed - set(paths))
    # files before directories, deepest directories first
    kinds = [(fs.path / p).is_dir() for p in paths]
    assert kinds == sorted(kinds)
    depth = [p.count("/") + (p != ".") for p in paths if (fs.path / p).is_dir()]
    assert depth == sorted(depth, reverse=True)
    # the function itself: the same ranges give the same paths, and nothing for untouched rows
    group = fs.group(mode="r+")
    rows = [(first, first + 30)] if level == "utt" else [(first, first + 20)]
    ranges = ({"values": rows, "names": rows, "clip_k": rows} if level == "utt" else
              {"values": [(first * FRAMES, (first + 20) * FRAMES)], "times": [(first * FRAMES, (first + 20) * FRAMES)],
               "offsets": [(first + 1, first + 21)], "names": rows})
    assert sorted(p.relative_to(fs.path).as_posix() for p in sync_rows(group, ranges)) == sorted(paths)
    assert not [p for p in sync_rows(group, {}) if "/c/" in p.as_posix()]


def test_redone_rows_are_fsynced_before_the_second_commit(tmp_path, caplog):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = store.create("audio/utt", level="utt", dim=D, provenance=Provenance(extractor="x"))
    write(fs, names(0, 80), "utt")
    with caplog.at_level(logging.DEBUG, logger="mer.store.durable"):
        with fs.writer() as w:  # c003 and c070 again: appended as rows 80-81, then copied to rows 3 and 70
            w.add("c003", vec(103, "utt"), extras={"k": 103.0})
            w.add("c070", vec(170, "utt"), extras={"k": 170.0})
    append, rewrite = synced(caplog)
    assert {p for p in append if "/c/" in p} >= {"values/c/1/0", "names/c/1"}
    rewritten = {p for p in rewrite if "/c/" in p and (fs.path / p).is_file()}
    assert rewritten == {"values/c/0/0", "values/c/1/0", "clip_k/c/0"}  # rows 3 and 70, of values and extras
    np.testing.assert_array_equal(fs.read(["c003", "c070"]), np.stack([vec(103, "utt"), vec(170, "utt")]))


@pytest.mark.parametrize("level, chunk", [
    ("utt", "values/c/1/0"), ("utt", "names/c/1"),
    ("frame", "values/c/1/0"), ("frame", "names/c/0"), ("frame", "offsets/c/0"), ("frame", "times/c/1"),
])
def test_chunk_lost_after_commit_is_reported_and_its_clips_redone(tmp_path, level, chunk):
    store = FeatureStore(tmp_path / "s.zarr")
    key = f"audio/{level}"
    fs = store.create(key, level=level, dim=D, provenance=Provenance(extractor="x"))
    write(fs, names(0, 80), level)
    (fs.path / chunk).unlink()  # what a power loss after an unsynced commit could leave
    found = check_store(store)
    assert found and not any(p.fixed for p in found), found
    fixed = check_store(store, repair=True)
    assert fixed and all(p.fixed for p in fixed), [str(p) for p in fixed]
    assert check_store(store) == []
    lost = set(names(0, 80)) - fs.done_names()
    assert lost, "the clips of the lost chunk are no longer done"
    write(fs, sorted(lost), level)  # the rerun: only the clips not done
    assert check_store(store) == []
    assert sorted(fs.names()) == names(0, 80)
    got = fs.read(names(0, 80))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, vec(i, level))
    if level == "frame":
        for i, t in enumerate(fs.read_times(names(0, 80))):
            np.testing.assert_array_equal(t, np.arange(FRAMES, dtype=np.float32) + i)


def test_repair_fsyncs_its_rewrites_and_the_ledger_last(tmp_path, caplog):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = store.create("audio/utt", level="utt", dim=D, provenance=Provenance(extractor="x"))
    write(fs, names(0, 80), "utt")
    (fs.path / "values/c/1/0").unlink()  # rows 64-79 lost: repair blanks their names (names/c/0 rewritten)
    (fs.path / "_pending").mkdir(exist_ok=True)
    with caplog.at_level(logging.DEBUG, logger="mer.store.durable"):
        fixed = check_store(store, repair=True)
    assert fixed and all(p.fixed for p in fixed)
    paths = synced(caplog)[-1]
    assert paths[-2:] == ["zarr.json", "."]  # the ledger, then the set directory, after everything else
    assert {"names/c/0", "names/zarr.json", "values/zarr.json", "values/c/0/0", "names/c"} <= set(paths)
    assert paths.index("names/c/0") < paths.index("names/zarr.json") < paths.index("names/c")
    assert not [p for p in paths if p.startswith("_")]
    assert fs.done_names() == set(names(0, 64))
