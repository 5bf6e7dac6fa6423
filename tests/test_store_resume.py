"""Resume, provenance, SIGKILL mid-write, concurrent writers and repair on real stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S, SCRIPTS
from mer.store import FeatureStore, ProvenanceMismatch
from mer.store.check import check_store
from mer.store.segments import Segment, list_segments

sys.path.insert(0, str(SCRIPTS))
from write_synthetic import expected  # noqa: E402

WRITER = [sys.executable, str(SCRIPTS / "write_synthetic.py")]


def _assert_complete(store: FeatureStore, key: str, level: str, n: int) -> None:
    fs = store[key]
    names = fs.names()
    assert len(names) == len(set(names)) == n, "every clip exactly once"
    assert set(names) == {f"clip{i:06d}" for i in range(n)}
    got = fs.read([f"clip{i:06d}" for i in range(n)])
    for i, g in enumerate(got):
        want, _ = expected(i, level)
        np.testing.assert_array_equal(g, want)


def test_resume_skips_done_clips(tmp_path):
    s = tmp_path / "s.zarr"
    out = subprocess.run(WRITER + [str(s), "audio/syn", "utt", "100"], capture_output=True, text=True, check=True)
    assert "wrote 100" in out.stdout
    out = subprocess.run(WRITER + [str(s), "audio/syn", "utt", "150"], capture_output=True, text=True, check=True)
    assert "wrote 50" in out.stdout  # the first 100 were skipped
    _assert_complete(FeatureStore(s), "audio/syn", "utt", 150)


def test_provenance_mismatch_refused_and_force_starts_anew(store, prov):
    fs = store.create("audio/a", level="utt", dim=4, provenance=prov(model="m1"))
    with fs.writer() as w:
        w.add("c0", np.ones(4))
    # versions of packages and creation time are recorded, not compared
    same = store.create("audio/a", level="utt", dim=4, provenance=prov(model="m1", packages={"torch": "0.0"}))
    assert same.names() == ["c0"]
    with pytest.raises(ProvenanceMismatch) as err:
        store.create("audio/a", level="utt", dim=4, provenance=prov(model="m2"))
    assert "model: stored='m1' new='m2'" in str(err.value) and "--force" in str(err.value)
    with pytest.raises(ProvenanceMismatch, match="dtype"):
        store.create("audio/a", level="utt", dim=4, provenance=prov(model="m1"), dtype="float32")
    with pytest.raises(ProvenanceMismatch, match=r"decode\.fps"):
        store.create("audio/a", level="utt", dim=4, provenance=prov(model="m1", decode={"fps": 2}))
    fresh = store.create("audio/a", level="utt", dim=4, provenance=prov(model="m2"), force=True)
    assert fresh.names() == [] and fresh.provenance.model == "m2"


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_sigkill_then_rerun_every_clip_once(tmp_path, level):
    """Kill the writer at several moments (mid-flush, mid-consolidation), rerun, verify all values."""
    s = tmp_path / "s.zarr"
    n = 3000
    cmd = WRITER + [str(s), "video/syn", level, str(n), "--flush-rows", "40", "--consolidate-every", "3"]
    rng = np.random.default_rng(1)
    kills = 0
    progress = []
    for _attempt in range(6):
        # ~3 ms per clip keeps the whole job ~9 s long, so every kill lands mid-run
        proc = subprocess.Popen(cmd + ["--sleep", "0.003"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(float(rng.uniform(0.8, 2.0)))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if "video/syn" in FeatureStore(s):  # not the directory: it exists before the set's metadata
            progress.append(len(FeatureStore(s)["video/syn"].done_names()))
    assert kills >= 4, "the writer finished too quickly for the kills to land"
    assert progress and 0 < progress[-1] < n, f"the kills should leave a partial set: {progress}"
    assert progress == sorted(progress), f"each resumed run adds to the last: {progress}"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    store = FeatureStore(s)
    assert check_store(store) == []
    _assert_complete(store, "video/syn", level, n)


def test_two_writers_at_once_lose_and_double_nothing(tmp_path):
    s = tmp_path / "s.zarr"
    # make the set first so both processes agree on it, then run two overlapping writers
    subprocess.run(WRITER + [str(s), "audio/syn", "utt", "1"], check=True, capture_output=True)
    a = subprocess.Popen(WRITER + [str(s), "audio/syn", "utt", "1200", "--flush-rows", "30"])
    b = subprocess.Popen(WRITER + [str(s), "audio/syn", "utt", "1000", "--start", "800", "--flush-rows", "30"])
    assert a.wait(timeout=HANG_S) == 0 and b.wait(timeout=HANG_S) == 0
    store = FeatureStore(s)
    assert check_store(store) == []
    _assert_complete(store, "audio/syn", "utt", 1800)


def test_set_half_created_by_a_killed_writer_is_made_anew(store, prov):
    import zarr

    # a writer killed inside create(): the group and one array exist, the set's metadata does not
    half = zarr.open_group(str(store.path), mode="a").require_group("audio").create_group("h")
    half.create_array("values", shape=(0, 4), dtype="float32")
    assert "audio/h" not in store and store.sets() == []
    fs = store.create("audio/h", level="utt", dim=4, provenance=prov(), dtype="float32")
    with fs.writer() as w:
        w.add("c0", np.arange(4))
    assert store.sets() == ["audio/h"] and fs.names() == ["c0"]
    assert check_store(store) == []


def test_interrupted_consolidation_is_repaired(store, prov):
    fs = store.create("audio/a", level="utt", dim=4, provenance=prov(), dtype="float32")
    with fs.writer() as w:
        for i in range(10):
            w.add(f"c{i}", np.full(4, i))
    # 1. a consolidation that died after appending rows but before its commit
    g = fs.group(mode="r+")
    g["values"].resize((15, 4))
    g["values"][10:] = 7.0
    g["names"].resize((15,))
    problems = check_store(store)
    assert any("uncommitted rows" in p.problem for p in problems)
    fixed = check_store(store, repair=True)
    assert all(p.fixed for p in fixed) and check_store(store) == []
    assert g["values"].shape[0] == 10 or fs.group()["values"].shape == (10, 4)
    # 2. a consolidation that committed but died before deleting its segments
    seg = Segment(names=["c10"], values=np.full((1, 4), 10, np.float32))
    seg_id = fs.write_segment(seg)
    saved = (fs.pending_dir / f"{seg_id}.npz").read_bytes()
    assert fs.consolidate() == 1
    fs.pending_dir.mkdir(exist_ok=True)
    (fs.pending_dir / f"{seg_id}.npz").write_bytes(saved)
    assert fs.consolidate() == 0  # recognised as merged already
    assert fs.names().count("c10") == 1 and list_segments(fs.pending_dir) == []


def test_pending_segments_reported_and_consolidated_by_fix(store, prov):
    fs = store.create("audio/a", level="utt", dim=4, provenance=prov(), dtype="float32")
    fs.write_segment(Segment(names=["x", "y"], values=np.ones((2, 4), np.float32), failed={"z": "corrupt file"}))
    assert fs.done_names() == {"x", "y"} and fs.names() == []
    assert fs.failures() == {"z": "recorded in a pending segment"}
    problems = check_store(store)
    assert len(problems) == 1 and "not consolidated" in problems[0].problem
    check_store(store, repair=True)
    assert fs.names() == ["x", "y"] and fs.failures() == {"z": "corrupt file"}
    assert check_store(store) == []


def test_lost_chunk_is_found_and_redone(store, prov):
    fs = store.create("audio/a", level="utt", dim=4, provenance=prov(), dtype="float32")
    with fs.writer() as w:
        for i in range(100):
            w.add(f"c{i}", np.full(4, i))
    chunk = next(Path(fs.path / "values").rglob("c/0/0"))
    chunk.unlink()
    problems = check_store(store)
    assert len(problems) == 100 and all("missing or NaN/Inf" in p.problem for p in problems)
    check_store(store, repair=True)
    assert fs.names() == [] and check_store(store) == []
    with fs.writer() as w:  # the rerun redoes them
        for i in range(100):
            if f"c{i}" not in fs.done_names():
                w.add(f"c{i}", np.full(4, i))
    assert sorted(fs.names()) == sorted(f"c{i}" for i in range(100))
    np.testing.assert_array_equal(fs.read(["c42"]), [[42] * 4])
    assert check_store(store) == []
