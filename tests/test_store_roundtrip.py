"""Round trips through real Zarr stores: utterance and frame level, plain readers, joins, redo."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from mer.store import ClipValueError, MissingClipsError
from mer.store.check import check_store


def _utt(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    return [f"c{i:04d}" for i in range(n)], rng.standard_normal((n, dim)).astype(np.float32)


def _frames(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, size=n)
    vals = [rng.standard_normal((t, dim)).astype(np.float32) for t in lengths]
    times = [np.arange(t, dtype=np.float32) / 25.0 for t in lengths]
    return [f"f{i:04d}" for i in range(n)], vals, times


@pytest.mark.parametrize("dtype,atol", [("float16", 2e-3), ("float32", 0.0)])
def test_utt_round_trip(store, prov, dtype, atol):
    names, x = _utt(700, 24)
    fs = store.create("audio/toy", level="utt", dim=24, provenance=prov(), dtype=dtype)
    with fs.writer(flush_rows=64) as w:  # 11 segments, consolidated on close
        for n, v in zip(names, x):
            w.add(n, v)
    assert fs.names() == names
    got = store.read("audio/toy")
    assert got.dtype == np.dtype(dtype) and got.shape == (700, 24)
    np.testing.assert_allclose(got.astype(np.float32), x, atol=atol, rtol=1e-3 if atol else 0)
    pick = ["c0650", "c0003", "c0100"]
    np.testing.assert_allclose(fs.read(pick, dtype="float32"), x[[650, 3, 100]], atol=atol, rtol=1e-3 if atol else 0)
    assert not (fs.pending_dir).exists()
    assert check_store(store) == []


def test_frame_round_trip(store, prov):
    names, vals, times = _frames(120, 8)
    fs = store.create("video/toy-frames", level="frame", dim=8, provenance=prov(), dtype="float32")
    with fs.writer(flush_rows=25) as w:
        for n, v, t in zip(names, vals, times):
            w.add(n, v, times=t)
    got = fs.read()
    assert len(got) == 120
    for a, b in zip(got, vals):
        np.testing.assert_array_equal(a, b)
    sub = ["f0119", "f0002"]
    for a, b in zip(fs.read_times(sub), [times[119], times[2]]):
        np.testing.assert_array_equal(a, b)
    batch = fs.read_padded(sub)
    assert batch.values.shape == (2, max(len(vals[119]), len(vals[2])), 8)
    assert batch.lengths.tolist() == [len(vals[119]), len(vals[2])]
    assert batch.mask.sum(axis=1).tolist() == batch.lengths.tolist()
    np.testing.assert_array_equal(batch.values[1, : len(vals[2])], vals[2])
    assert np.all(batch.values[1, len(vals[2]):] == 0)
    # the layout a plain reader sees: CSR offsets over concatenated frames
    g = zarr.open_group(str(fs.path), mode="r")
    off = g["offsets"][:]
    assert off.shape == (121,) and off[0] == 0 and off[-1] == sum(len(v) for v in vals)
    np.testing.assert_array_equal(g["values"][off[5]:off[6]], vals[5])
    assert check_store(store) == []


def test_plain_readers_need_no_mer(store, prov):
    import dask.array as da
    import xarray as xr

    names, x = _utt(300, 12)
    fs = store.create("text/toy", level="utt", dim=12, provenance=prov(), dtype="float32")
    with fs.writer() as w:
        w.add_batch(names, x)
    root = zarr.open_group(str(store.path), mode="r")
    np.testing.assert_array_equal(root["text/toy/values"][:], x)
    assert root["text/toy/names"][:].tolist() == names
    assert root["text/toy"].attrs["mer"]["provenance"]["extractor"] == "synthetic"
    np.testing.assert_array_equal(da.from_zarr(str(store.path), component="text/toy/values").compute(), x)
    ds = xr.open_zarr(str(store.path), group="text/toy", consolidated=False)
    assert ds["values"].dims == ("row", "dim") and ds["values"].shape == (300, 12)
    np.testing.assert_array_equal(ds["values"].values, x)


def test_missing_names_error_lists_them(store, prov):
    names, x = _utt(10, 4)
    fs = store.create("audio/toy", level="utt", dim=4, provenance=prov())
    with fs.writer() as w:
        w.add_batch(names, x)
    with pytest.raises(MissingClipsError) as err:
        fs.read(["c0001", "nope1", "nope2"])
    msg = str(err.value)
    assert "2 of 3" in msg and "nope1" in msg and "nope2" in msg and "audio/toy" in msg
    assert err.value.missing == ["nope1", "nope2"]


def test_writer_refuses_bad_vectors_and_records_failures(store, prov):
    fs = store.create("audio/toy", level="utt", dim=4, provenance=prov())
    with fs.writer() as w:
        w.add("good", np.ones(4))
        with pytest.raises(ClipValueError, match=r"clip 'nan-clip'.*NaN/Inf"):
            w.add("nan-clip", np.array([1.0, np.nan, 0, 0]))
        with pytest.raises(ClipValueError, match=r"clip 'short'.*shape"):
            w.add("short", np.ones(3))
        with pytest.raises(ClipValueError, match="overflow float16"):
            w.add("huge", np.full(4, 1e6))
        w.fail("nan-clip", "model produced NaN")
    assert fs.names() == ["good"]
    assert fs.failures() == {"nan-clip": "model produced NaN"}
    with fs.writer() as w:  # a later success clears the failure
        w.add("nan-clip", np.zeros(4))
    assert fs.failures() == {}
    assert sorted(fs.names()) == ["good", "nan-clip"]


def test_join_inner_outer(store, prov):
    a = store.create("audio/a", level="utt", dim=3, provenance=prov(), dtype="float32")
    v = store.create("video/v", level="frame", dim=2, provenance=prov(), dtype="float32")
    with a.writer() as w:
        for i in range(5):
            w.add(f"c{i}", np.full(3, i))
    with v.writer() as w:
        for i in range(2, 7):
            w.add(f"c{i}", np.full((i, 2), i))
    inner = store.join(["audio/a", "video/v"])
    assert inner.names == ["c2", "c3", "c4"]
    np.testing.assert_array_equal(inner.features["audio/a"][:, 0], [2, 3, 4])
    assert [x.shape for x in inner.features["video/v"]] == [(2, 2), (3, 2), (4, 2)]
    outer = store.join(["audio/a", "video/v"], how="outer")
    assert outer.names == [f"c{i}" for i in range(7)]
    assert outer.present["audio/a"].tolist() == [True] * 5 + [False] * 2
    assert outer.present["video/v"].tolist() == [False] * 2 + [True] * 5
    assert outer.features["video/v"][0] is None and np.all(outer.features["audio/a"][6] == 0)
    with pytest.raises(MissingClipsError, match="video/v"):
        store.join(["audio/a", "video/v"], names=["c0", "c3"])
    ok = store.join(["audio/a", "video/v"], names=["c0", "c6"], how="outer")
    assert ok.present["audio/a"].tolist() == [True, False]


def test_redo_replaces_clip_once(store, prov):
    u = store.create("audio/u", level="utt", dim=2, provenance=prov(), dtype="float32")
    f = store.create("video/f", level="frame", dim=2, provenance=prov(), dtype="float32")
    with u.writer() as w, f.writer() as wf:
        for i in range(4):
            w.add(f"c{i}", np.full(2, i))
            wf.add(f"c{i}", np.full((2, 2), i))
    with u.writer() as w, f.writer() as wf:
        w.add("c1", np.full(2, 10.0))
        wf.add("c1", np.full((5, 2), 10.0))
    assert u.names() == ["c0", "c1", "c2", "c3"]
    np.testing.assert_array_equal(u.read(["c1"]), [[10, 10]])
    assert sorted(f.names()) == ["c0", "c1", "c2", "c3"]
    assert f.read(["c1"])[0].shape == (5, 2) and np.all(f.read(["c1"])[0] == 10)
    assert check_store(store) == []


def test_per_clip_extras_round_trip(store, prov):
    fs = store.create("video/faces", level="frame", dim=2, provenance=prov(), dtype="float32")
    with fs.writer(flush_rows=2) as w:
        w.add("a", np.ones((3, 2)), extras={"faces": 3})
        w.add("b", np.ones((2, 2)), extras={"faces": 0})
        w.add("c", np.ones((4, 2)))
    with fs.writer() as w:
        w.add("d", np.ones((1, 2)), extras={"faces": 1, "truncated": 5})
        w.add("a", np.ones((5, 2)), extras={"faces": 5})  # redo: the new count replaces the old
    np.testing.assert_array_equal(fs.read_extra("faces", ["a", "b", "c", "d"]), [5, 0, np.nan, 1])
    np.testing.assert_array_equal(fs.read_extra("truncated", ["a", "d"]), [np.nan, 5])
    assert sorted(fs.meta()["extras"]) == ["faces", "truncated"]
    with pytest.raises(KeyError, match="records no per-clip 'speed'"):
        fs.read_extra("speed")
    assert check_store(store) == []
