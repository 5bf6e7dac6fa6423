"""`mer extract` through the real console script: real bundled models, resume, --only/--force,
failure recording, provenance refusal, and dask (2 workers) equal to a single process."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S, SAMPLE, mer_cli
from media import write_av
from mer.store import FeatureStore
from mer.store.check import check_store

TEXT_SET = "text/sentence-all-MiniLM-L6-v2-utt"
AUDIO_SET = "audio/whisper-ct2-whisper-base-utt"


def mer(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, timeout=HANG_S)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clips") / "clips.csv"
    res = mer("clips", "scan", SAMPLE, "-o", out)
    assert res.returncode == 0, res.stderr
    return out


def test_text_extract_resume_only_force(tmp_path, clips):
    store = tmp_path / "s.zarr"
    res = mer("extract", "text", clips, "--store", store)
    assert res.returncode == 0, res.stderr
    fs = FeatureStore(store)[TEXT_SET]
    names = fs.names()
    assert len(names) == 360 and fs.dim == 384 and fs.dtype == "float16"
    x = fs.read(dtype="float32")
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=2e-3)  # normalised MiniLM vectors
    # RAVDESS has two sentences: the 360 subtitles embed to exactly two distinct vectors
    assert len(np.unique(np.round(x, 3), axis=0)) == 2
    prov = fs.provenance
    assert prov.extractor == "sentence" and prov.weights_hash.startswith("sha256:")
    assert prov.decode == {"text_column": "text"} and prov.config["model"] == "all-MiniLM-L6-v2"

    again = mer("extract", "text", clips, "--store", store)
    assert again.returncode == 0 and "│   360 │    0 │     360 │      0 │" in again.stdout

    only = tmp_path / "only.txt"
    only.write_text("\n".join(names[:3]) + "\n")
    redo = mer("extract", "text", clips, "--store", store, "--only", only, "--force")
    assert redo.returncode == 0 and "│     3 │    3 │       0 │      0 │" in redo.stdout
    assert FeatureStore(store)[TEXT_SET].names().count(names[0]) == 1

    other = mer("extract", "text", clips, "--store", store, "-O", "normalize=false")
    assert other.returncode == 1
    assert "different provenance" in other.stderr and "config.normalize" in other.stderr
    fresh = mer("extract", "text", clips, "--store", store, "-O", "normalize=false", "--force", "--limit", "5")
    assert fresh.returncode == 0
    fs = FeatureStore(store)[TEXT_SET]
    assert len(fs.names()) == 5 and fs.provenance.config["normalize"] is False
    assert check_store(FeatureStore(store)) == []


def test_audio_failures_recorded_rest_done(tmp_path):
    good = sorted((SAMPLE / "audio").glob("*.flac"))[:3]
    media = tmp_path / "media"
    media.mkdir()
    (media / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    (media / "empty.flac").write_bytes(b"")
    write_av(media / "silent_video.mp4", audio=False)
    write_av(media / "with_audio.mp4", audio=True)
    rows = [{"name": p.stem, "audio": str(p), "video": ""} for p in good]
    rows += [{"name": "corrupt", "audio": "media/corrupt.flac", "video": ""},
             {"name": "empty", "audio": "media/empty.flac", "video": ""},
             {"name": "missing", "audio": "media/nowhere.flac", "video": ""},
             {"name": "noaudio", "audio": "", "video": "media/silent_video.mp4"},
             {"name": "fromvideo", "audio": "", "video": "media/with_audio.mp4"},
             {"name": "nopath", "audio": "", "video": ""}]
    table = tmp_path / "clips.csv"
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "audio", "video"])
        w.writeheader()
        w.writerows(rows)
    store = tmp_path / "s.zarr"
    res = mer("extract", "audio", table, "--store", store, "--batch-size", "2")
    assert res.returncode == 1, res.stdout + res.stderr
    fs = FeatureStore(store)[AUDIO_SET]
    assert sorted(fs.names()) == sorted([p.stem for p in good] + ["fromvideo"])
    assert fs.dim == 512
    failures = fs.failures()
    assert set(failures) == {"corrupt", "empty", "missing", "noaudio", "nopath"}
    assert "no audio track" in failures["noaudio"]
    assert "empty file" in failures["empty"] and "file not found" in failures["missing"]
    assert "no audio or video path" in failures["nopath"]
    for name in failures:
        assert f"clip {name}:" in res.stdout.replace("\n", " ") or name in res.stdout
    info = json.loads(mer("store", "info", store, "--json").stdout)
    assert info[0]["failures"] == 5
    x = fs.read(dtype="float32")
    assert np.all(np.isfinite(x)) and x.std() > 0.01
    # fix one file and rerun: only the failed clips are attempted, the fixed one is done
    shutil.copy(good[0], media / "corrupt.flac")
    rerun = mer("extract", "audio", table, "--store", store)
    assert rerun.returncode == 1  # four clips are still broken
    assert "│     9 │    1 │       4 │      4 │" in rerun.stdout
    fs = FeatureStore(store)[AUDIO_SET]
    assert "corrupt" in fs.names() and "corrupt" not in fs.failures()
    np.testing.assert_allclose(fs.read(["corrupt"]), fs.read([good[0].stem]), atol=1e-3)
    assert check_store(FeatureStore(store)) == []


def test_distributed_equals_single_process(tmp_path, clips):
    single, multi = tmp_path / "single.zarr", tmp_path / "multi.zarr"
    assert mer("extract", "text", clips, "--store", single, "--limit", "120").returncode == 0
    res = mer("extract", "text", clips, "--store", multi, "--limit", "120", "--workers", "2")
    assert res.returncode == 0, res.stderr
    a, b = FeatureStore(single)[TEXT_SET], FeatureStore(multi)[TEXT_SET]
    assert sorted(a.names()) == sorted(b.names()) and len(a.names()) == 120
    names = a.names()
    np.testing.assert_allclose(a.read(names, dtype="float32"), b.read(names, dtype="float32"), atol=1e-3)
    assert check_store(FeatureStore(multi)) == []
    assert not (FeatureStore(multi)[TEXT_SET].pending_dir).exists()


def test_table_extractor_through_stage(tmp_path, clips):
    au = tmp_path / "au.csv"
    lines = (SAMPLE / "openface_au.csv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    broken = rows[5].split(",")
    broken[3] = "n/a"
    au.write_text("\n".join([header, *rows[:5], ",".join(broken), *rows[6:300]]) + "\n")  # 60 clips missing
    store = tmp_path / "s.zarr"
    res = mer("extract", "video", clips, "--store", store, "-e", "table", "-m", au, "--set", "au",
              "--store-dtype", "float32")
    assert res.returncode == 1
    fs = FeatureStore(store)["video/au"]
    assert len(fs.names()) == 299 and fs.dim == 35
    failures = fs.failures()
    assert len(failures) == 61
    bad_name = broken[0]
    assert "non-numeric or missing value in column 'AU04_r'" in failures[bad_name]
    assert sum("not in feature table au.csv" in r for r in failures.values()) == 60
    first = rows[0].split(",")
    np.testing.assert_array_equal(fs.read([first[0]])[0], np.array(first[1:], dtype=np.float32))
    assert fs.provenance.extractor == "table" and fs.provenance.weights_hash.startswith("sha256:")


def test_sigkill_mid_extract_then_rerun(tmp_path, clips):
    import os
    import signal
    import time

    ref, killed = tmp_path / "ref.zarr", tmp_path / "killed.zarr"
    assert mer("extract", "text", clips, "--store", ref).returncode == 0
    cmd = [*mer_cli(), "extract", "text", str(clips), "--store", str(killed), "--batch-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + HANG_S
    while proc.poll() is None and time.monotonic() < deadline:
        # the set's directory appears before its metadata is written: ask the store, not the path
        if TEXT_SET in FeatureStore(killed):
            done = len(FeatureStore(killed)[TEXT_SET].done_names())
            if done:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < done < 360
    res = mer("extract", "text", clips, "--store", killed)
    assert res.returncode == 0
    a, b = FeatureStore(ref)[TEXT_SET], FeatureStore(killed)[TEXT_SET]
    names = a.names()
    assert sorted(b.names()) == sorted(names) and len(set(b.names())) == 360
    np.testing.assert_allclose(a.read(names, dtype="float32"), b.read(names, dtype="float32"), atol=1e-3)
    assert check_store(FeatureStore(killed)) == []
