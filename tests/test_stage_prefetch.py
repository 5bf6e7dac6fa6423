"""``StageSpec.prefetch``: None decodes ahead in threads, 0 decodes serially in the calling thread;
both store the same vectors and record the same failures."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from conftest import SAMPLE, one_torch_thread, write_csv
from mer.pipeline.stage import StageReport, StageSpec, build_extractor, open_set, run_names, run_stage
from mer.store import FeatureStore
from mer.store.tables import read_clip_table
from tiny_models import build_hubert

N_CLIPS = 6


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six real RAVDESS clips, a corrupt file between them and a missing one at the end."""
    root = tmp_path_factory.mktemp("prefetch")
    real = read_clip_table(SAMPLE / "clips.csv")
    rows = [{"name": n, "audio": str(real.media_path(n, "audio"))} for n in real.names[:N_CLIPS]]
    (root / "corrupt.flac").write_bytes(b"fLaC but not really" * 50)
    rows.insert(3, {"name": "corrupt", "audio": str(root / "corrupt.flac")})
    rows.append({"name": "missing", "audio": str(root / "missing.flac")})
    model = build_hubert(root / "hubert")
    return write_csv(root / "clips.csv", rows), model


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny model runs several times faster on one torch thread when other jobs share the cores."""
    with one_torch_thread():
        yield


def spec(clips, store, prefetch: int | None) -> StageSpec:
    table, model = clips
    return StageSpec(modality="audio", clips=table, store=store, extractor="hf-speech",
                     config={"model": str(model), "batch_size": 2, "layers": "last"}, prefetch=prefetch)


def test_serial_stage_equals_prefetching_stage(tmp_path, clips) -> None:
    reports = {p: run_stage(spec(clips, tmp_path / f"p{p}.zarr", p), progress=False) for p in (None, 0)}
    for r in reports.values():
        assert r.done == N_CLIPS and set(r.failed) == {"corrupt", "missing"}
    assert reports[0].failed == reports[None].failed  # same reasons, word for word
    key = reports[0].key
    serial, ahead = FeatureStore(tmp_path / "p0.zarr")[key], FeatureStore(tmp_path / "pNone.zarr")[key]
    assert serial.names() == ahead.names()  # same length groups, same order
    assert serial.failures() == ahead.failures()
    np.testing.assert_array_equal(serial.read(dtype="float32"), ahead.read(dtype="float32"))


def test_serial_stage_starts_no_decode_thread(tmp_path, clips) -> None:
    seen: dict[int | None, set[str]] = {}
    for prefetch in (None, 0):
        s = spec(clips, tmp_path / f"t{prefetch}.zarr", prefetch)
        extractor = build_extractor(s)
        fs = open_set(s, extractor, force=False)
        table = read_clip_table(s.clips)
        names = seen[prefetch] = set()

        def tick() -> None:  # called in the stage's thread after each clip
            names.update(t.name for t in threading.enumerate())

        report = StageReport(key=fs.key)
        run_names(s, extractor, fs, table, table.names, report, on_clip=tick)
        assert report.done == N_CLIPS and len(report.failed) == 2
    assert any(n.startswith("decode") for n in seen[None])  # the check can see the pool's threads
    assert not any(n.startswith("decode") for n in seen[0])


def test_prefetch_default_and_refusal(tmp_path) -> None:
    audio = StageSpec(modality="audio", clips=tmp_path, store=tmp_path, extractor="hf-speech")
    assert audio.prefetch is None and audio.ahead(4) == 8 * 4  # one length group of 8 batches
    video = StageSpec(modality="video", clips=tmp_path, store=tmp_path, extractor="clip")
    assert video.ahead(4) == 16 and dataclasses.replace(video, prefetch=0).ahead(4) == 0
    with pytest.raises(ValueError, match="prefetch"):
        StageSpec(modality="audio", clips=tmp_path, store=tmp_path, extractor="hf-speech", prefetch=-1).ahead(4)
