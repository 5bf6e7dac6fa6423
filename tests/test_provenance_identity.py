"""Provenance identity (issue 13, item 5): what two writers of one feature set must agree on.

* ``compute_type="auto"`` is recorded as what CTranslate2 runs (float32 on CPU), so a set a GPU run
  wrote in float16 is refused when resumed on CPU, and an old set that recorded ``"auto"`` (whose
  type cannot be told) is refused with a message naming exactly that field;
* ``intra_threads`` (a speed knob) is not identity: a set is resumed with another thread count;
* a hub id records the commit of the snapshot the loader used, so another snapshot is refused.

Real Whisper-base (bundled, CTranslate2) on CPU, a real HuBERT (tiny, random) loaded by hub id from
a Hugging Face cache this test lays out itself (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S, mer_cli, one_thread_env, write_csv
from mer.store import FeatureStore, Provenance, ProvenanceMismatch
from mer.store.provenance import identity_differences

pytest.importorskip("ctranslate2")

SR = 16000


def wav_table(folder: Path, n: int, seconds: float = 1.0) -> Path:
    """``n`` short mono WAV tones and their clip table."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        t = np.arange(int(seconds * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
        with wave.open(str(folder / f"c{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SR)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        rows.append({"name": f"c{i}", "audio": str(folder / f"c{i}.wav")})
    return write_csv(folder.parent / "clips.csv", rows)


def whisper_spec(tmp_path: Path, table: Path, **config):
    from mer.pipeline.stage import StageSpec

    return StageSpec(modality="audio", clips=table, store=tmp_path / "s.zarr", extractor="whisper-ct2",
                     key="audio/w", config={"input_seconds": 0, **config}, prefetch=0)


def test_auto_compute_type_is_recorded_as_float32_on_cpu(tmp_path):
    from mer.pipeline.stage import build_extractor, provenance_of

    spec = whisper_spec(tmp_path, wav_table(tmp_path / "media", 1), intra_threads=1)
    assert spec.config.get("compute_type", "auto") == "auto"
    prov = provenance_of(spec, build_extractor(spec))
    assert prov.config["compute_type"] == "float32"
    assert "intra_threads" not in prov.config and "device" not in prov.config
    assert prov.revision is None and prov.weights_hash  # a local folder: its hash, no hub revision


def test_set_written_in_float16_is_refused_on_cpu_with_auto(tmp_path):
    """The set a GPU run started (its provenance says float16) is not extended by a CPU run."""
    from mer.pipeline.stage import build_extractor, provenance_of, run_stage

    table = wav_table(tmp_path / "media", 3)
    spec = whisper_spec(tmp_path, table)
    ext = build_extractor(spec)
    gpu = provenance_of(spec, ext)
    gpu.config["compute_type"] = "float16"  # what a CUDA run with compute_type=auto records
    fs = FeatureStore(spec.store).create("audio/w", level="utt", dim=ext.dim, provenance=gpu)
    rng = np.random.default_rng(0)
    with fs.writer() as w:
        for name in ("c0", "c1"):
            w.add(name, rng.standard_normal(ext.dim).astype(np.float32))
    before = fs.read(dtype="float32")
    with pytest.raises(ProvenanceMismatch) as err:
        run_stage(spec, progress=False)
    msg = str(err.value)
    assert "config.compute_type: stored='float16' new='float32'" in msg and "--force" in msg
    assert fs.names() == ["c0", "c1"]
    np.testing.assert_array_equal(fs.read(dtype="float32"), before)


def test_old_set_that_recorded_auto_is_refused_naming_only_compute_type(tmp_path):
    """A set written before the resolved type was recorded says ``auto`` (and ``intra_threads``):
    which type it holds cannot be told, so it is refused; the thread count is not a difference."""
    from mer.pipeline.stage import build_extractor, provenance_of, run_stage

    table = wav_table(tmp_path / "media", 2)
    spec = whisper_spec(tmp_path, table, intra_threads=2)
    ext = build_extractor(spec)
    old = provenance_of(spec, ext)
    old.config.update(compute_type="auto", intra_threads=0)  # what mer recorded before
    FeatureStore(spec.store).create("audio/w", level="utt", dim=ext.dim, provenance=old)
    with pytest.raises(ProvenanceMismatch) as err:
        run_stage(spec, progress=False)
    diff = err.value.differences
    assert diff == {"config.compute_type": ("auto", "float32")}, diff
    report = run_stage(spec, force=True, progress=False)
    assert (report.done, report.skipped) == (2, 0)
    assert FeatureStore(spec.store)["audio/w"].provenance.config["compute_type"] == "float32"


def test_intra_threads_is_not_identity(tmp_path):
    from mer.pipeline.stage import run_stage

    table = wav_table(tmp_path / "media", 3)
    first = run_stage(whisper_spec(tmp_path, table, intra_threads=1), limit=2, progress=False)
    assert (first.done, first.failed) == (2, {})
    again = run_stage(whisper_spec(tmp_path, table, intra_threads=2), progress=False)  # no --force
    assert (again.done, again.skipped, again.failed) == (1, 2, {})
    fs = FeatureStore(tmp_path / "s.zarr")["audio/w"]
    assert sorted(fs.names()) == ["c0", "c1", "c2"] and "intra_threads" not in fs.provenance.config


def test_old_provenance_loads_and_speed_knobs_never_differ():
    """``from_dict`` of a set written before ``revision`` existed; identities recorded with speed
    knobs in their config (old sets, fusion runs trained on them) still match."""
    old = {"extractor": "whisper-ct2", "config": {"model": "m", "compute_type": "float32", "intra_threads": 0},
           "model": "m", "weights_hash": "sha256:x", "decode": {}}
    prov = Provenance.from_dict(old)
    assert prov.revision is None and prov.identity()["revision"] is None
    assert "intra_threads" not in prov.identity()["config"]
    new = {**old, "config": {"model": "m", "compute_type": "float32"}, "revision": None}
    assert identity_differences(old, new) == {}
    assert identity_differences({**old, "config": {**old["config"], "intra_threads": 4}}, new) == {}


# ---- hub ids: the snapshot's commit ---------------------------------------------------------------
def hub_snapshot(cache: Path, repo: str, commit: str, seed: int) -> Path:
    """A tiny HuBERT as the Hugging Face cache holds a hub download: ``models--org--name/snapshots/
    <commit>/`` with ``refs/main`` naming the commit."""
    import tiny_models

    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    tiny_models.build_hubert(snap, seed=seed)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def test_hub_id_records_its_snapshot_commit_and_another_snapshot_is_refused(tmp_path):
    pytest.importorskip("transformers")
    cache, repo = tmp_path / "hub", "org/tiny-hubert"
    first, second = "1" * 40, "2" * 40
    hub_snapshot(cache, repo, first, seed=0)
    table = wav_table(tmp_path / "media", 2, seconds=0.5)
    store = tmp_path / "s.zarr"
    env = one_thread_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", COLUMNS="200", NO_COLOR="1")

    def mer(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, env=env,
                              timeout=HANG_S, check=False)

    base = ("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", repo, "--set", "h",
            "-O", "layers=last2")
    res = mer(*base, "--limit", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    prov = FeatureStore(store)["audio/h"].provenance
    assert (prov.model, prov.revision, prov.weights_hash) == (repo, first, None)

    res = mer(*base)  # the same snapshot: resumed
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(FeatureStore(store)["audio/h"].names()) == ["c0", "c1"]

    hub_snapshot(cache, repo, second, seed=7)  # the hub moved on: refs/main names another commit
    res = mer(*base)
    text = re.sub(r"[\s\u2500-\u257f]+", " ", res.stdout + res.stderr)
    assert res.returncode == 1 and "Traceback" not in res.stderr, text
    assert f"revision: stored='{first}' new='{second}'" in text and "Use --force" in text
    assert sorted(FeatureStore(store)["audio/h"].names()) == ["c0", "c1"]

    res = mer(*base, "--force")  # starts the set anew from the new snapshot
    assert res.returncode == 0, res.stdout + res.stderr
    assert FeatureStore(store)["audio/h"].provenance.revision == second
