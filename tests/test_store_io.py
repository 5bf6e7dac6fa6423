"""Import and export round trips: MERTools .npy folders, HDF5, CSV feature tables."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from conftest import SAMPLE
from mer.store import FeatureStore, Provenance
from mer.store.check import check_store
from mer.store.io_csv import import_csv_features
from mer.store.io_h5 import export_h5, import_h5
from mer.store.io_npy import export_npy_folder, import_npy_folder


@pytest.fixture
def npy_folders(tmp_path):
    rng = np.random.default_rng(3)
    utt, frame = tmp_path / "clip-vit-utt", tmp_path / "hubert-frame"
    utt.mkdir()
    frame.mkdir()
    want_u, want_f = {}, {}
    for i in range(40):
        name = f"sample_{i:05d}"
        want_u[name] = rng.standard_normal(32).astype(np.float32)
        want_f[name] = rng.standard_normal((int(rng.integers(3, 30)), 10)).astype(np.float32)
        np.save(utt / f"{name}.npy", want_u[name])
        np.save(frame / f"{name}.npy", want_f[name])
    return utt, frame, want_u, want_f


def test_npy_import_then_h5_and_npy_export_equal(tmp_path, npy_folders):
    utt, frame, want_u, want_f = npy_folders
    store = FeatureStore(tmp_path / "s.zarr")
    r1 = import_npy_folder(store, "video/clip", utt, dtype="float32")
    r2 = import_npy_folder(store, "audio/hubert", frame, dtype="float32", fps=50)
    assert (r1.written, r2.written, r1.failed, r2.failed) == (40, 40, {}, {})
    assert store["video/clip"].level == "utt" and store["audio/hubert"].level == "frame"
    t = store["audio/hubert"].read_times(["sample_00003"])[0]
    np.testing.assert_allclose(t, np.arange(len(want_f["sample_00003"])) / 50)

    h5_path = tmp_path / "feats.h5"
    assert sorted(export_h5(store, h5_path)) == ["audio/hubert", "video/clip"]
    with h5py.File(h5_path, "r") as h5:
        names = [n.decode() for n in h5["video/clip/names"][:]]
        for name, vec in zip(names, h5["video/clip/values"][:]):
            np.testing.assert_array_equal(vec, want_u[name])
        off = h5["audio/hubert/offsets"][:]
        names = [n.decode() for n in h5["audio/hubert/names"][:]]
        for i, name in enumerate(names):
            np.testing.assert_array_equal(h5["audio/hubert/values"][off[i]:off[i + 1]], want_f[name])

    out = tmp_path / "exported"
    assert export_npy_folder(store, "audio/hubert", out) == 40
    for name, arr in want_f.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), arr)

    again = FeatureStore(tmp_path / "t.zarr")
    reports = import_h5(again, h5_path)
    assert sorted(r.written for r in reports) == [40, 40]
    for key in ("video/clip", "audio/hubert"):
        a, b = store[key], again[key]
        assert a.names() == b.names()
        for x, y in zip(a.read() if a.level == "frame" else [a.read()], b.read() if b.level == "frame" else [b.read()]):
            np.testing.assert_array_equal(x, y)
        assert a.provenance.identity() == b.provenance.identity()
    assert check_store(again) == []


def test_npy_import_records_bad_files_and_resumes(tmp_path, npy_folders):
    utt, _, want_u, _ = npy_folders
    (utt / "broken_clip.npy").write_bytes(b"\x93NUMPY garbage that is not an array")
    np.save(utt / "wrong_dim.npy", np.ones(7, np.float32))
    store = FeatureStore(tmp_path / "s.zarr")
    rep = import_npy_folder(store, "video/clip", utt)
    assert rep.written == 40
    assert set(rep.failed) == {"broken_clip", "wrong_dim"}
    assert "broken_clip.npy" in rep.failed["broken_clip"]
    assert "shape" in rep.failed["wrong_dim"] and "D=32" in rep.failed["wrong_dim"]
    assert set(store["video/clip"].failures()) == {"broken_clip", "wrong_dim"}
    (utt / "broken_clip.npy").unlink()
    np.save(utt / "broken_clip.npy", np.zeros(32, np.float32))
    rep2 = import_npy_folder(store, "video/clip", utt)
    assert (rep2.written, rep2.skipped) == (1, 40)
    assert set(store["video/clip"].failures()) == {"wrong_dim"}
    np.testing.assert_allclose(store.read("video/clip", ["sample_00007"], dtype="float32")[0],
                               want_u["sample_00007"], atol=2e-3, rtol=1e-3)


def test_csv_import_of_real_openface_aus(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    rep = import_csv_features(store, "video/openface-au", SAMPLE / "openface_au.csv")
    assert (rep.written, rep.failed) == (360, {})
    with open(SAMPLE / "openface_au.csv") as f:
        rows = list(csv.reader(f))
    header, first = rows[0], rows[1]
    fs = store["video/openface-au"]
    assert fs.dim == 35 == len(header) - 1 and fs.dtype == "float32"
    np.testing.assert_array_equal(fs.read([first[0]])[0], np.array(first[1:], dtype=np.float32))
    assert fs.provenance.weights_hash.startswith("sha256:")


def test_csv_import_bad_row_and_duplicates(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("name,a,b\nx,1,2\ny,1,oops\nz,3,\n")
    store = FeatureStore(tmp_path / "s.zarr")
    rep = import_csv_features(store, "video/t", path)
    assert rep.written == 1
    assert "non-numeric value 'oops' in column 'b'" in rep.failed["y"]
    assert "missing value in column 'b'" in rep.failed["z"]
    dup = tmp_path / "d.csv"
    dup.write_text("name,a\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="duplicate clip name 'x'"):
        import_csv_features(store, "video/d", dup)


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_h5_round_trip_keeps_per_clip_and_per_frame_extras(tmp_path, level):
    """Face boxes per decoded frame and per-clip numbers survive export and import; a clip written
    without them stays without them (empty frame extras, NaN per-clip numbers)."""
    store = FeatureStore(tmp_path / "s.zarr")
    fs = store.create(f"video/{level}", level=level, dim=4, provenance=Provenance(extractor="x"), dtype="float32")
    rng = np.random.default_rng(0)
    frames = {"a": 3, "b": 5, "c": 2}
    with fs.writer() as w:
        for name, t in frames.items():
            fx = None if name == "c" else {"face_score": rng.random(t).astype(np.float32),
                                          "face_x0": np.where(np.arange(t) == 1, np.nan, 0.25).astype(np.float32)}
            extras = {} if name == "b" else {"faces": float(t)}
            values = rng.standard_normal(4 if level == "utt" else (t, 4)).astype(np.float32)
            w.add(name, values, times=None if level == "utt" else np.arange(t, dtype=np.float32) / 2,
                  extras=extras, frame_extras=fx)
    export_h5(store, tmp_path / "x.h5")
    again = FeatureStore(tmp_path / "t.zarr")
    assert [r.written for r in import_h5(again, tmp_path / "x.h5")] == [3]
    a, b = fs, again[f"video/{level}"]
    names = list(frames)
    np.testing.assert_array_equal(b.read_extra("faces", names), [3.0, np.nan, 2.0])
    assert b.frame_extra_keys() == a.frame_extra_keys() == ["face_score", "face_x0"]
    for key in ("face_score", "face_x0"):
        for x, y in zip(a.read_frame_extra(key, names), b.read_frame_extra(key, names)):
            np.testing.assert_array_equal(x, y)
    assert [len(x) for x in b.read_frame_extra("face_x0", names)] == [3, 5, 0]
    assert check_store(again) == []
