"""Issue 8, cases 7 and 8: ``mer extract`` killed with SIGKILL mid-run, and two ``mer extract``
processes on the same store and feature set at once.

Real subprocesses of the console script over 0.5 s WAV clips with a tiny random HuBERT. The
reference vectors come from the same model run in this process on the same decoded clips. After
every kill and rerun, and after the two concurrent runs, every clip must be present exactly once,
with the reference's values, nothing may be left pending, and ``mer store check`` must pass.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    HANG_S,
    assert_check_passes,
    mer,
    mer_popen,
    ok,
    report_counts,
    tiny,
    wav_clips,
    write_table,
)
from mer.store import FeatureStore

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

KEY = "audio/hf-speech-hubert-utt"
F16 = {"atol": 2e-3, "rtol": 2e-3}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """400 clips and their reference vectors (the model run here, float32). The runs commit every
    40 clips (``--flush-rows 40``), so two kills after commits leave most of the job to resume."""
    from mer.extractors.hf_speech import HFSpeechConfig, HFSpeechExtractor
    from mer.pipeline.decode_audio import decode_audio

    root = tmp_path_factory.mktemp("interrupt")
    rows = wav_clips(root / "media", 400)
    table = write_table(root / "clips.csv", rows)
    ext = HFSpeechExtractor(HFSpeechConfig(model=str(tiny("hubert")), layers="last2"))
    ref: dict[str, np.ndarray] = {}
    for lo in range(0, len(rows), 64):
        batch = [decode_audio(r["name"], root / r["audio"]) for r in rows[lo:lo + 64]]
        ref.update((c.name, f.values) for c, f in zip(batch, ext.extract(batch)))
    return table, ref


def _args(table: Path, store: Path) -> tuple[object, ...]:
    return ("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", tiny("hubert"), "-O", "layers=last2",
            "--flush-rows", "40")


def _done(store: Path) -> int:
    if not (store / "zarr.json").exists() or KEY not in FeatureStore(store):
        return 0  # not yet created (a set is listed once its attributes are written)
    return len(FeatureStore(store)[KEY].done_names())


def _assert_complete(store: Path, ref: dict[str, np.ndarray]) -> None:
    fs = FeatureStore(store)[KEY]
    names = fs.names()
    assert len(names) == len(set(names)) == len(ref), "every clip exactly once"
    assert set(names) == set(ref)
    order = sorted(ref)
    np.testing.assert_allclose(fs.read(order, dtype="float32"), np.stack([ref[n] for n in order]), **F16)
    assert not fs.pending_dir.exists() and fs.failures() == {}
    assert_check_passes(store)


def test_case7_sigkill_mid_extract_then_rerun(tmp_path, clips):
    """SIGKILL, then SIGTERM (what a scheduler sends first), each once the run has committed new
    work; the third run finishes the rest. SIGKILL loses at most the clips buffered since the last
    commit; SIGTERM loses nothing: the run commits its buffer and merges before exiting 143."""
    table, ref = clips
    store = tmp_path / "s.zarr"
    progress = [0]
    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc = mer_popen(*_args(table, store), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + HANG_S
        while proc.poll() is None and time.monotonic() < deadline and _done(store) <= progress[-1]:
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        durable = _done(store)
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=HANG_S)
        progress.append(_done(store))
        if sig == signal.SIGKILL:  # write-ahead segments are left: check says so, and that is all
            res = mer("store", "check", store)
            assert "Traceback" not in res.stderr and "data lost" not in res.stderr and "NaN" not in res.stderr
            assert res.returncode == 0 or "write-ahead segments not consolidated" in res.stderr
        else:
            assert proc.returncode == 143 and "Traceback" not in out, out
            assert "terminated (SIGTERM): committing what is done" in out
            fs = FeatureStore(store)[KEY]
            assert not fs.pending_dir.exists() and len(fs.names()) == progress[-1] >= durable  # all merged
            assert_check_passes(store)
    assert 0 < progress[1] < progress[2] < len(ref), f"each run adds committed work: {progress}"
    # the rerun skips every committed clip and does the rest
    res = ok(mer(*_args(table, store)))
    clips_, done, skipped, failed = report_counts(res)
    assert (clips_, failed) == (len(ref), 0) and skipped == progress[-1] and done == len(ref) - skipped
    _assert_complete(store, ref)


def test_case8_two_extracts_on_one_set_at_once(tmp_path, clips):
    """No lock refuses the second: both finish, and the set holds each clip once, correct."""
    table, ref = clips
    some = sorted(ref)[:200]
    ref = {n: ref[n] for n in some}
    table = write_table(tmp_path / "clips.csv", [{"name": n, "audio": str(table.parent / "media" / f"{n}.wav")}
                                                 for n in some])
    store = tmp_path / "s.zarr"
    procs = [mer_popen(*_args(table, store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=HANG_S) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "Traceback" not in err
    _assert_complete(store, ref)
    # a third run finds everything done
    res = ok(mer(*_args(table, store)))
    assert report_counts(res) == (len(ref), 0, len(ref), 0)


def test_case8_processes_creating_one_new_store_at_once(tmp_path):
    """The race case 8 found: several processes creating the same new store (and set) at the same
    instant must all succeed (six stores, two processes each, released at one moment)."""
    import sys

    code = ("import sys, time\nfrom mer.store import FeatureStore, Provenance\n"
            "while time.time() < float(sys.argv[2]):\n    pass\n"
            "FeatureStore(sys.argv[1]).create('audio/x', level='utt', dim=4, provenance=Provenance(extractor='s'))\n")
    start = time.time() + 4.0
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"s{i}.zarr"), str(start)],
                              stderr=subprocess.PIPE, text=True) for i in range(6) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=HANG_S)
        assert p.returncode == 0, err
    for i in range(6):
        assert FeatureStore(tmp_path / f"s{i}.zarr").sets() == ["audio/x"]
        assert_check_passes(tmp_path / f"s{i}.zarr")
