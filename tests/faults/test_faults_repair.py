"""``mer store repair``: drop from the ledger every clip whose data is missing, so a rerun redoes it.

A real store made by ``mer extract audio -e table`` (a CSV of per-clip vectors: no model to load,
so each run takes a second), then damaged on disk the ways a copy, a full disk or a stray ``rm``
damage it: a lost values chunk, arrays cut shorter than the ledger, a lost names chunk, a whole
array gone. Each time ``mer store check`` names the problem and exits 1, ``mer store repair`` lists
the clips it drops and exits 0, the store then checks clean, and the rerun redoes exactly the
dropped clips, to the same values; the ledger's recorded failures survive the repair.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from faultkit import (
    assert_check_passes,
    feature_table,
    flat,
    mer,
    ok,
    report_counts,
    write_table,
)
from mer.store import FeatureStore

KEY = "audio/feats"
N = 40


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store of N clips plus one recorded failure, and the command that (re)makes it."""
    root = tmp_path_factory.mktemp("repair")
    names = [f"c{i:03d}" for i in range(N)]
    table = write_table(root / "clips.csv", [{"name": n, "audio": f"{n}.wav"} for n in [*names, "absent"]])
    vecs = feature_table(root / "feats.csv", names)
    store = root / "s.zarr"
    args = ("extract", "audio", table, "--store", store, "-e", "table", "-m", root / "feats.csv", "--set", "feats",
            "--store-dtype", "float32")
    res = ok(mer(*args), code=1)  # "absent" is not in the feature table
    assert report_counts(res) == (N + 1, N, 0, 1)
    return store, args, vecs


def _lose_values_chunk(fs):
    next((fs.path / "values").rglob("c/0/0")).unlink()


def _cut_arrays(fs):
    import zarr

    g = zarr.open_group(str(fs.path), mode="r+")
    g["values"].resize((25, g["values"].shape[1]))


def _lose_names_chunk(fs):
    next((fs.path / "names").rglob("c/0")).unlink()


def _lose_values_array(fs):
    shutil.rmtree(fs.path / "values")


@pytest.mark.parametrize("damage, found, dropped", [
    (_lose_values_chunk, "clip 'c000': vectors missing or NaN/Inf", N),
    (_cut_arrays, f"values has 25 rows but the ledger commits {N} clips: data lost", N - 25),
    (_lose_names_chunk, f"{N} rows without a name, ledger expects 0", N),
    (_lose_values_array, f"array values missing: the data of all {N} committed clips is lost", N),
], ids=["values-chunk", "arrays-cut", "names-chunk", "values-array"])
def test_repair_drops_clips_whose_data_is_missing(tmp_path, pristine, damage, found, dropped):
    src, args, vecs = pristine
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    args = tuple(store if a == src else a for a in args)
    damage(FeatureStore(store)[KEY])

    res = mer("store", "check", store)
    assert res.returncode == 1 and "Traceback" not in res.stderr and found in flat(res), flat(res)
    res = ok(mer("store", "repair", store))
    if dropped != N or found.startswith("clip"):  # the names are still there to list
        assert f"{KEY}: dropped {dropped} clips whose data was missing (a rerun redoes them)" in flat(res)
    assert "0 remaining" in res.stdout
    assert_check_passes(store)
    fs = FeatureStore(store)[KEY]
    assert len(fs.names()) == N - dropped
    assert fs.failures() == {"absent": "not in feature table feats.csv"}  # the ledger's failures survive

    res = ok(mer(*args), code=1)  # "absent" still fails
    assert report_counts(res) == (N + 1, dropped, N - dropped, 1)
    fs = FeatureStore(store)[KEY]
    names = sorted(vecs)
    assert sorted(fs.names()) == names
    np.testing.assert_array_equal(fs.read(names), np.stack([vecs[n] for n in names]))
    assert_check_passes(store)


def test_repair_of_a_clean_store_changes_nothing(tmp_path, pristine):
    src, _, vecs = pristine
    store = tmp_path / "s.zarr"
    shutil.copytree(src, store)
    res = ok(mer("store", "repair", store))
    assert "0 problems found, 0 fixed, 0 remaining" in res.stdout and "dropped" not in res.stdout
    assert sorted(FeatureStore(store)[KEY].names()) == sorted(vecs)
    res = mer("store", "repair", tmp_path / "nowhere.zarr")
    assert res.returncode == 1 and "does not exist" in res.stderr and not (tmp_path / "nowhere.zarr").exists()


def test_repair_frame_level_keeps_the_clips_whose_frames_are_all_there(store, prov):
    """Frame-level set: values cut mid-clip; the clips before the cut stay, the rest are dropped."""
    import zarr

    fs = store.create("video/frames", level="frame", dim=4, provenance=prov(), dtype="float32")
    clips = {f"v{i}": np.full((5, 4), i, np.float32) + np.arange(5, dtype=np.float32)[:, None] for i in range(10)}
    with fs.writer() as w:
        for name, x in clips.items():
            w.add(name, x, times=np.arange(5) * 0.5)
    g = zarr.open_group(str(fs.path), mode="r+")
    g["values"].resize((23, 4))  # clip v4 owns frames 20-24: cut inside it
    res = mer("store", "check", store.path)
    assert res.returncode == 1 and "values has 23 rows" in flat(res) and "/ 50 frames: data lost" in flat(res)
    res = ok(mer("store", "repair", store.path))
    assert "video/frames: dropped 6 clips whose data was missing (a rerun redoes them): v4, v5, v6, v7, v8, v9" in flat(res)
    assert_check_passes(store.path)
    fs = store["video/frames"]
    assert fs.names() == ["v0", "v1", "v2", "v3"] and fs.meta()["n_frames"] == 20
    for name, x in zip(fs.names(), fs.read(fs.names())):
        np.testing.assert_array_equal(x, clips[name])
    with fs.writer() as w:  # the rerun redoes the dropped clips
        for name in sorted(set(clips) - fs.done_names()):
            w.add(name, clips[name], times=np.arange(5) * 0.5)
    assert sorted(fs.names()) == sorted(clips)
    np.testing.assert_array_equal(fs.read(["v7"])[0], clips["v7"])
    assert_check_passes(store.path)


def test_unreadable_write_ahead_segment_is_set_aside_and_redone(tmp_path, pristine):
    """A damaged segment file (a copy cut short, a bad disk): check names it, nothing crashes, repair
    (or the next run) sets it aside in ``_unreadable/``, and the rerun redoes exactly its clips."""
    from mer.store import Segment

    _, args, vecs = pristine
    store = tmp_path / "s.zarr"
    args = tuple(store if str(a).endswith("s.zarr") else a for a in args)
    ok(mer(*args, "--limit", "20"))
    fs = FeatureStore(store)[KEY]
    names = sorted(vecs)
    fs.write_segment(Segment(names=names[20:30], values=np.stack([vecs[n] for n in names[20:30]])))
    bad = fs.write_segment(Segment(names=names[30:], values=np.stack([vecs[n] for n in names[30:]])))
    path = fs.pending_dir / f"{bad}.npz"
    path.write_bytes(path.read_bytes()[:300])

    res = mer("store", "check", store)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"write-ahead segment {bad}.npz is unreadable (BadZipFile: " in flat(res)
    assert ok(mer("store", "info", store, "--json")).returncode == 0
    res = ok(mer("store", "repair", store))
    assert "set aside in _unreadable/: its clips are not done, the next run redoes them [fixed]" in flat(res)
    assert (fs.path / "_unreadable" / f"{bad}.npz").is_file() and not fs.pending_dir.exists()
    assert sorted(FeatureStore(store)[KEY].names()) == names[:30]
    assert_check_passes(store)

    res = ok(mer(*args), code=1)  # "absent" still fails
    assert report_counts(res) == (N + 1, N - 30, 30, 1)
    fs = FeatureStore(store)[KEY]
    assert sorted(fs.names()) == names
    np.testing.assert_array_equal(fs.read(names), np.stack([vecs[n] for n in names]))
    assert_check_passes(store)
