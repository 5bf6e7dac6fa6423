"""Issue 15: per-frame extras (face box and score per decoded frame) in the Zarr feature store.

Real stores on disk, written through :meth:`FeatureSet.writer` as ``pipeline/stage.py`` does:
round trips at both levels over several segments and consolidations, clips without frame extras,
lengths refused with the clip named, redos, two writer processes at once, ``mer store check`` /
``repair`` on a lost chunk, fsyncs, plain zarr / xarray / dask readers, ``mer store info``, and the
extraction stage itself (its decoder wrapped so that every decoded clip carries frame extras,
whether or not the video decoder fills them yet) and ``mer extract video --faces`` via the CLI.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import HANG_S, mer_cli, one_thread_env, write_csv
from mer.store import ClipValueError, FeatureStore, Provenance
from mer.store import frame_extras as fx
from mer.store.check import check_store
from mer.store.featureset import FeatureSet
from mer.store.info import describe_set

DIM = 3
KEYS = ("face_score", "face_x0", "face_x1", "face_y0", "face_y1")
ROOT = Path(__file__).resolve().parent


def clip(name: str, version: int = 1, level: str = "utt") -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Vectors, frame times and frame extras of ``name`` as run ``version`` computes them.

    Every seventh clip has no frame extras; every fifth lacks ``face_score``; no face (NaN box) on
    some frames.
    """
    seed = zlib.crc32(f"{name}/{version}".encode())
    rng = np.random.default_rng(seed)
    t = 1 + seed % 7
    values = rng.standard_normal(DIM if level == "utt" else (t, DIM))
    times = (np.arange(t) * 0.5).astype(np.float32)
    if seed % 7 == 0:
        return values, times, {}
    per = {k: rng.random(t).astype(np.float32) for k in KEYS}
    per["face_x0"][rng.random(t) < 0.3] = np.nan  # no face on that frame
    if seed % 5 == 0:
        del per["face_score"]
    return values, times, per


def expected(name: str, key: str, version: int = 1, level: str = "utt") -> np.ndarray:
    """What ``read_frame_extra(key)`` must give for ``name``: its values, NaN when it lacks the key,
    empty when it has no frame extras."""
    _, times, per = clip(name, version, level)
    if not per:
        return np.zeros(0, np.float32)
    return per.get(key, np.full(len(times), np.nan, np.float32))


def write(fs: FeatureSet, names: list[str], version: int = 1, *, flush_rows: int = 3,
          consolidate_every: int = 2) -> None:
    with fs.writer(flush_rows=flush_rows, consolidate_every=consolidate_every) as w:
        for name in names:
            values, times, per = clip(name, version, fs.level)
            w.add(name, values, times=times if fs.level == "frame" else None, frame_extras=per or None)


def create(store: FeatureStore, level: str) -> FeatureSet:
    return store.create(f"video/fx-{level}", level=level, dim=DIM, provenance=Provenance(extractor="synthetic"))


def assert_frame_extras(fs: FeatureSet, want: dict[str, int]) -> None:
    """Every clip of ``want`` (clip -> version) reads back its frame extras, in the order asked."""
    names = list(want)[::-1]  # not row order
    assert set(fs.frame_extra_keys()) <= set(KEYS)
    for key in fs.frame_extra_keys():
        got = fs.read_frame_extra(key, names)
        assert len(got) == len(names)
        for name, g in zip(names, got):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, expected(name, key, want[name], fs.level), err_msg=f"{name} {key}")
    if fs.level == "frame":  # aligned with the frames (or empty)
        for name, g, t in zip(names, fs.read_frame_extra("face_x0", names), fs.read_times(names)):
            assert len(g) in (0, len(t)), name


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_round_trip_over_several_segments(tmp_path, level):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    table = [f"c{i:02d}" for i in range(40)]
    write(fs, table[:25])
    write(fs, table[25:], flush_rows=4)
    assert sorted(fs.names()) == table
    assert fs.frame_extra_keys() == list(KEYS)
    assert_frame_extras(fs, dict.fromkeys(table, 1))
    empty = [n for n in table if not clip(n, 1, level)[2]]
    no_score = [n for n in table if clip(n, 1, level)[2] and "face_score" not in clip(n, 1, level)[2]]
    assert empty and no_score  # the table has both kinds
    assert all(len(a) == 0 for a in fs.read_frame_extra("face_x0", empty))
    assert all(np.isnan(a).all() and len(a) for a in fs.read_frame_extra("face_score", no_score))
    whole = fs.read_frame_extra("face_y1")  # all clips, row order
    assert len(whole) == len(fs.names())
    meta = fs.meta()
    assert meta["frame_extras"] == list(KEYS)
    assert meta["n_extra_frames"] == sum(len(expected(n, "face_x0", 1, level)) for n in table)
    assert check_store(store) == [] and check_store(store, repair=True) == []
    with pytest.raises(KeyError, match=r"no per-frame 'mouth'.*recorded: face_score, face_x0"):
        fs.read_frame_extra("mouth")


def test_set_without_frame_extras_has_no_group(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = store.create("audio/plain", level="utt", dim=DIM, provenance=Provenance(extractor="synthetic"))
    with fs.writer() as w:
        w.add("a", np.ones(DIM))
    assert not (fs.path / fx.GROUP).exists() and fs.frame_extra_keys() == []
    with pytest.raises(KeyError, match=r"recorded: none"):
        fs.read_frame_extra("face_x0")
    # frame extras that arrive later: the clips before them recorded none
    with fs.writer() as w:
        w.add("b", np.ones(DIM), frame_extras={"face_score": np.array([0.5, 0.25])})
    assert [len(a) for a in fs.read_frame_extra("face_score", ["a", "b"])] == [0, 2]
    assert check_store(store) == []


def test_a_key_new_to_the_set_is_nan_for_earlier_clips(tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "FX_CHUNK", 4)  # several chunks: every one must be on disk for `check`
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, "frame")
    with fs.writer() as w:
        for i in range(5):
            w.add(f"a{i}", np.ones((3, DIM)), frame_extras={"face_score": np.full(3, i, np.float32)})
    with fs.writer() as w:
        w.add("b", np.ones((2, DIM)), frame_extras={"face_score": np.ones(2), "blink": np.array([0.0, 1.0])})
    assert fs.frame_extra_keys() == ["blink", "face_score"]
    blink = fs.read_frame_extra("blink", ["a0", "a4", "b"])
    assert [len(a) for a in blink] == [3, 3, 2] and np.isnan(blink[0]).all()
    np.testing.assert_array_equal(blink[2], [0.0, 1.0])
    assert check_store(store) == []


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_lengths_that_differ_are_refused_naming_the_clip(tmp_path, level):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    values = np.ones(DIM) if level == "utt" else np.ones((3, DIM))
    with fs.writer() as w:
        with pytest.raises(ClipValueError,
                           match=r"clip 'odd'.*'face_x1' has 2 values but ('face_x0' has 3|the clip has 3 frames)"):
            w.add("odd", values, frame_extras={"face_x0": np.zeros(3), "face_x1": np.zeros(2)})
        with pytest.raises(ClipValueError, match=r"clip 'flat'.*'face_x0' must be 1-D"):
            w.add("flat", values, frame_extras={"face_x0": np.zeros((3, 1))})
        with pytest.raises(ClipValueError, match=r"clip 'bad-key'.*'../x' is not a valid array name"):
            w.add("bad-key", values, frame_extras={"../x": np.zeros(3)})
        if level == "frame":  # frame level: one number per frame of the clip
            with pytest.raises(ClipValueError, match=r"clip 'short'.*'face_x0' has 2 values but the clip has 3 frames"):
                w.add("short", values, frame_extras={"face_x0": np.zeros(2)})
        w.fail("odd", "frame extras of different lengths")
        w.add("good", values, frame_extras={"face_x0": np.arange(3.0)})
    assert fs.names() == ["good"] and "odd" in fs.failures()
    np.testing.assert_array_equal(fs.read_frame_extra("face_x0")[0], [0, 1, 2])


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_redo_replaces_a_clips_frame_extras(tmp_path, level):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    table = [f"c{i:02d}" for i in range(15)]
    write(fs, table)
    redo = ["c02", "c05", "c06", "c11"]
    write(create(store, level), redo, 2, flush_rows=2)  # `--only LIST --force`: the set is kept
    want = {**dict.fromkeys(table, 1), **dict.fromkeys(redo, 2)}
    assert sorted(fs.names()) == table and len(fs.names()) == len(table)
    assert_frame_extras(fs, want)
    # a redo without frame extras: the clip's frame extras are its new ones, i.e. none
    with create(store, level).writer() as w:
        w.add("c03", np.zeros(DIM) if level == "utt" else np.zeros((2, DIM)))
    assert [len(a) for a in fs.read_frame_extra("face_x0", ["c03"])] == [0]
    if level == "utt":  # the clip keeps its row
        assert fs.names() == table
    assert check_store(store) == [] and check_store(store, repair=True) == [] and check_store(store) == []


WRITER = """
import sys, zlib
sys.path.insert(0, {tests!r})
from test_store_frame_extras import write
from mer.store import FeatureStore
write(FeatureStore({store!r})[{key!r}], sys.argv[1:], flush_rows=2, consolidate_every=1)
"""


def test_two_writer_processes_keep_every_clip(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, "frame")
    mine = {w: [f"{w}{i:02d}" for i in range(24)] for w in ("a", "b")}
    script = WRITER.format(tests=str(ROOT), store=str(store.path), key=fs.key)
    procs = [subprocess.Popen([sys.executable, "-c", script, *names], env=one_thread_env(),
                              stderr=subprocess.PIPE, text=True) for names in mine.values()]
    for p in procs:
        _, err = p.communicate(timeout=HANG_S)
        assert p.returncode == 0, err
    table = mine["a"] + mine["b"]
    assert sorted(fs.names()) == sorted(table)
    assert_frame_extras(fs, dict.fromkeys(table, 1))
    assert not fs.pending_dir.exists() and check_store(store) == []


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_check_finds_a_lost_chunk_and_repair_has_its_clips_redone(tmp_path, monkeypatch, level):
    monkeypatch.setattr(fx, "FX_CHUNK", 8)
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    table = [f"c{i:02d}" for i in range(12)]
    with fs.writer(flush_rows=5) as w:  # 3 frames each: clip i owns frames 3i .. 3i+2
        for i, name in enumerate(table):
            w.add(name, np.full(DIM, i) if level == "utt" else np.full((3, DIM), i),
                  frame_extras={"face_x0": np.arange(3.0) + 3 * i, "face_score": np.ones(3)})
    chunk = fs.path / fx.GROUP / "face_x0" / "c" / "1"  # frames 8-15: clips c02-c05
    assert chunk.is_file()
    chunk.unlink()
    found = check_store(store)
    assert sorted(p.clip for p in found) == ["c02", "c03", "c04", "c05"], found
    assert all("frame extras missing (a lost chunk of frame_extras/face_x0)" in p.problem for p in found)
    fixed = check_store(store, repair=True)
    assert sorted(p.clip for p in fixed) == ["c02", "c03", "c04", "c05"] and all(p.fixed for p in fixed)
    assert check_store(store) == []
    todo = [n for n in table if n not in fs.done_names()]
    assert todo == ["c02", "c03", "c04", "c05"]  # a rerun redoes exactly those
    with fs.writer() as w:
        for name in todo:
            i = table.index(name)
            w.add(name, np.full(DIM, i) if level == "utt" else np.full((3, DIM), i),
                  frame_extras={"face_x0": np.arange(3.0) + 3 * i, "face_score": np.ones(3)})
    got = fs.read_frame_extra("face_x0", table)
    np.testing.assert_array_equal(np.concatenate(got), np.arange(36.0))
    assert check_store(store) == []


def test_check_finds_lost_spans_and_uncommitted_tails(tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "SPAN_CHUNK", 4)
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, "utt")
    table = [f"c{i:02d}" for i in range(10)]
    with fs.writer() as w:
        for i, name in enumerate(table):
            w.add(name, np.full(DIM, i), frame_extras={"face_score": np.full(2, i, np.float32)})
    (fs.path / fx.GROUP / "spans" / "c" / "1" / "0").unlink()  # rows 4-7
    g = zarr.open_group(str(fs.path), mode="r+")
    g["frame_extras/face_score"].resize((25,))  # as a consolidation killed mid-append leaves it
    found = check_store(store)
    assert sorted(p.clip for p in found if p.clip) == ["c04", "c05", "c06", "c07"]
    assert any("frame_extras/face_score has 5 uncommitted rows" in p.problem for p in found)
    check_store(store, repair=True)
    assert check_store(store) == []
    assert sorted(fs.names()) == table[:4] + table[8:]
    assert g["frame_extras/face_score"].shape == (20,)


def test_consolidation_fsyncs_the_frame_extras_it_wrote(tmp_path, caplog):
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, "utt")
    with caplog.at_level(logging.DEBUG, logger="mer.store.durable"):
        write(fs, [f"c{i:02d}" for i in range(10)], flush_rows=100)
    calls = [list(r.args[-1]) for r in caplog.records if r.name == "mer.store.durable"]
    synced = set(calls[-1])
    assert {"frame_extras/spans/c/0/0", "frame_extras/face_x0/c/0", "frame_extras/face_score/c/0",
            "frame_extras/zarr.json", "frame_extras/spans/zarr.json", "frame_extras/face_x0/zarr.json",
            "frame_extras", "frame_extras/face_x0/c"} <= synced, synced


@pytest.mark.parametrize("level", ["utt", "frame"])
def test_plain_zarr_xarray_dask_read_frame_extras(tmp_path, level):
    import dask.array as da
    import xarray as xr

    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    table = [f"c{i:02d}" for i in range(9)]
    write(fs, table)
    write(create(store, level), ["c04"], 2)  # a redone clip: plain readers skip rows named ""
    g = zarr.open_group(str(fs.path), mode="r")
    n = g.attrs["mer"]["n_rows"]
    names = g["names"][:n]
    spans = g["frame_extras/spans"][:n]
    x0 = g["frame_extras/face_x0"][:]
    want = {**dict.fromkeys(table, 1), "c04": 2}
    seen = []
    for name, (a, b) in zip(names, spans):
        if name == "":
            continue
        seen.append(name)
        np.testing.assert_array_equal(x0[a:b], expected(name, "face_x0", want[name], level), err_msg=name)
    assert sorted(seen) == table
    lazy = da.from_zarr(str(store.path), component=f"{fs.key}/frame_extras/face_x0").compute()
    np.testing.assert_array_equal(lazy, x0)
    ds = xr.open_zarr(str(store.path), group=fs.key, consolidated=False)  # the sub-group is not in the way
    assert "values" in ds and "spans" not in ds
    sub = xr.open_zarr(str(store.path), group=f"{fs.key}/frame_extras", consolidated=False)
    assert sub["spans"].dims == ("row", "bound") and sub["face_x0"].dims == ("extra_frame",)


def test_store_info_lists_frame_extras_keys(tmp_path):
    from typer.testing import CliRunner

    from mer.pipeline.cli_store import app

    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, "utt")
    with fs.writer() as w:
        w.add("a", np.ones(DIM), extras={"faces": 1.0}, frame_extras={"face_score": np.ones(2)})
    assert describe_set(store, fs.key)["frame_extras"] == ["face_score"]
    res = CliRunner().invoke(app, ["info", str(store.path), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    assert row["frame_extras"] == ["face_score"] and row["extras"] == ["faces"]
    res = CliRunner().invoke(app, ["info", str(store.path)])
    assert res.exit_code == 0, res.output
    assert "per clip: faces; per frame: face_score" in res.output


# ---- through the extraction stage ---------------------------------------------------------
def _stage_items(monkeypatch) -> dict[str, object]:
    """Wrap the stage's decoder: every decoded video clip carries frame extras (the decoder's own
    when it fills them, else made up here, one per decoded frame); returns name -> decoded clip."""
    from mer.pipeline import stage

    real = stage.load_item
    seen: dict[str, object] = {}

    def load_item(modality, table, name, settings):
        item = real(modality, table, name, settings)
        if not item.frame_extras:
            t = len(item.times)
            item.frame_extras = {"face_x0": np.linspace(0.1, 0.2, t, dtype=np.float32),
                                 "face_score": np.full(t, np.nan, np.float32)}
        seen[name] = item
        return item

    monkeypatch.setattr(stage, "load_item", load_item)
    return seen


class _MeanFrames:
    """A video extractor computing per-frame channel means (no model): utterance or frame level."""

    modality, decodes = "video", True

    def __init__(self, level: str) -> None:
        from mer.extractors.base import ExtractorConfig

        self.config = ExtractorConfig(level=level, batch_size=2)
        self.dim = DIM

    def extract(self, items):
        from mer.extractors.base import Features

        out = []
        for it in items:
            per = it.frames.reshape(len(it.frames), -1, 3).mean(axis=1).astype(np.float32) / 255
            out.append(Features(values=per, times=it.times) if self.config.level == "frame"
                       else Features(values=per.mean(axis=0)))
        return out


@pytest.mark.parametrize(("level", "consolidate"), [("utt", True), ("frame", False)])
def test_stage_stores_the_decoded_clips_frame_extras(tmp_path, monkeypatch, level, consolidate):
    """``run_names`` as ``mer extract`` runs it (and, without consolidating, as a dask worker's
    block does, the client consolidating afterwards): real decoding of synthetic videos."""
    from media import write_av
    from mer.pipeline.decode_video import VideoDecodeConfig
    from mer.pipeline.inputs import DecodeSettings
    from mer.pipeline.stage import StageReport, StageSpec, run_names
    from mer.store.tables import read_clip_table

    names = ["v0", "v1", "v2"]
    for n in names:
        write_av(tmp_path / f"{n}.mp4", audio=False)
    table_path = write_csv(tmp_path / "clips.csv", [{"name": n, "video": f"{n}.mp4"} for n in names])
    store = FeatureStore(tmp_path / "s.zarr")
    fs = create(store, level)
    spec = StageSpec(modality="video", clips=table_path, store=store.path, extractor="mean",
                     decode=DecodeSettings(video=VideoDecodeConfig(fps=2)), flush_rows=2)
    seen = _stage_items(monkeypatch)
    report = StageReport(key=fs.key)
    run_names(spec, _MeanFrames(level), fs, read_clip_table(table_path), names, report, consolidate=consolidate)
    if not consolidate:
        assert fs.names() == [] and fs.done_names() == set(names)  # committed segments, not merged yet
        fs.consolidate()
    assert report.failed == {} and sorted(fs.names()) == names
    keys = sorted(seen["v0"].frame_extras)
    assert fs.frame_extra_keys() == keys
    for key in keys:
        for name, got in zip(names, fs.read_frame_extra(key, names)):
            assert len(got) == len(seen[name].times) == 6  # 3 s at 2 fps
            np.testing.assert_array_equal(got, seen[name].frame_extras[key].astype(np.float32))
    assert check_store(store) == []


def test_cli_extract_video_faces_stores_frame_extras(tmp_path):
    """``mer extract video --faces`` with a tiny random CLIP model. The synthetic frames have no face;
    the decoder's frame extras (once it fills them) are stored one per decoded frame."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from media import write_av
    from mer.pipeline.decode_video import VideoDecodeConfig, decode_video
    from tiny_models import build_hf_clip

    model = build_hf_clip(tmp_path / "hfclip")
    names = ["v0", "v1"]
    for n in names:
        write_av(tmp_path / f"{n}.mp4", audio=False)
    table = write_csv(tmp_path / "clips.csv", [{"name": n, "video": f"{n}.mp4"} for n in names])
    store = tmp_path / "s.zarr"
    res = subprocess.run([*mer_cli(), "extract", "video", str(table), "--store", str(store), "-e", "clip", "-m",
                          str(model), "--fps", "2", "--faces", "--face-size", "32", "--set", "faces"],
                         capture_output=True, text=True, timeout=HANG_S, env=one_thread_env())
    assert res.returncode == 0, res.stdout + res.stderr
    fs = FeatureStore(store)["video/faces"]
    assert sorted(fs.names()) == names
    decoded = decode_video("v0", tmp_path / "v0.mp4", VideoDecodeConfig(fps=2, faces=True, face_size=32))
    if not decoded.frame_extras:  # the decoder does not fill them (yet): nothing per frame to store
        assert fs.frame_extra_keys() == []
        return
    assert fs.frame_extra_keys() == sorted(decoded.frame_extras)
    for key in fs.frame_extra_keys():
        for got in fs.read_frame_extra(key, names):
            np.testing.assert_array_equal(got, decoded.frame_extras[key].astype(np.float32))
    assert check_store(FeatureStore(store)) == []
