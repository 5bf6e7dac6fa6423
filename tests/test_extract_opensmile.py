"""`mer extract audio -e opensmile` through the real console script on real RAVDESS speech.

The stored vectors are compared with openSMILE called directly (``opensmile.Smile``, not mer's
extractor) on the same decoded samples, so a wrong feature set, level, column order or decode
shows up as wrong numbers. Also: LLD frame count and times against the clip length (10 ms hop),
a 0.05 s clip (too short for any analysis window: recorded as failed, never stored), a second of
digital silence (finite values, stored), resume, and ``whisper-ct2 -O layers=`` refused with the
reason (CTranslate2 gives only the last encoder layer). Independent CLI runs go two at a time.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

opensmile = pytest.importorskip("opensmile")

from conftest import HANG_S, SAMPLE, mer_cli  # noqa: E402
from conftest import write_csv as write_table  # noqa: E402
from mer.pipeline.decode_audio import decode_audio  # noqa: E402
from mer.store import FeatureStore  # noqa: E402

SR = 16000
UTT_SET, FRAME_SET = "audio/opensmile-eGeMAPSv02-utt", "audio/opensmile-eGeMAPSv02-frame"
F16 = dict(rtol=2.0 ** -11, atol=2.0 ** -24)  # float16 storage: half an ulp, relative (subnormals: absolute)
LONGEST_WINDOW = 960  # samples: eGeMAPS/ComParE's 60 ms pitch window; shorter clips give no frame
HOP = 160  # samples: 10 ms


def mer(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # one line per report row and error message
    return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, timeout=HANG_S, env=env)


def mer_all(*commands: tuple[object, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent ``mer`` runs, two at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: mer(*args), commands))


def report_row(res: subprocess.CompletedProcess[str]) -> tuple[int, int, int, int]:
    """(clips, done, skipped, failed) from the report table the CLI prints."""
    m = re.search(r"│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│\s*(\d+)\s*│", res.stdout)
    assert m, res.stdout + res.stderr
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def write_wav(path: Path, samples: np.ndarray) -> Path:
    """Mono 16-bit PCM WAV at 16 kHz."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return path


def ravdess_clips(n: int) -> list[Path]:
    """``n`` clips of the bundled RAVDESS table, spread over actors and emotions."""
    with open(SAMPLE / "clips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [(SAMPLE / rows[i]["audio"]).resolve() for i in np.linspace(0, len(rows) - 1, n).astype(int)]


def smile(level: str) -> opensmile.Smile:
    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=level)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, list[Path]]:
    """4 real clips, 0.05 s of real speech ("short") and 1 s of digital silence ("silent")."""
    root = tmp_path_factory.mktemp("opensmile")
    flacs = ravdess_clips(4)
    speech = decode_audio("speech", flacs[0]).samples
    mid = len(speech) // 2
    short = write_wav(root / "short.wav", speech[mid:mid + int(0.05 * SR)])
    silent = write_wav(root / "silent.wav", np.zeros(SR, np.float32))
    paths = [*flacs, short, silent]
    rows = [{"name": p.stem, "audio": str(p)} for p in flacs]
    rows += [{"name": "short", "audio": str(short)}, {"name": "silent", "audio": str(silent)}]
    return write_table(root / "clips.csv", rows), paths


def test_egemaps_utt_and_frames_equal_opensmile_short_clip_fails_resume(tmp_path, table):
    clips, paths = table
    names = [p.stem for p in paths[:4]] + ["short", "silent"]
    utt, frame = tmp_path / "utt.zarr", tmp_path / "frame.zarr"
    first, frames, layers = mer_all(
        ("extract", "audio", clips, "--store", utt, "-e", "opensmile", "--limit", "2"),
        ("extract", "audio", clips, "--store", frame, "-e", "opensmile", "--level", "frame", "--batch-size", "2"),
        ("extract", "audio", clips, "--store", tmp_path / "w.zarr", "-e", "whisper-ct2", "-O", "layers=last4"),
    )
    assert first.returncode == 0 and report_row(first) == (2, 2, 0, 0), first.stdout + first.stderr
    again = mer("extract", "audio", clips, "--store", utt, "-e", "opensmile")  # resume: the 2 done are skipped
    assert again.returncode == 1  # the short clip failed
    assert report_row(again) == (6, 3, 2, 1)

    # whisper-ct2 has no intermediate layers: refused before any model loads, with the reason
    assert layers.returncode != 0
    msg = re.sub(r"\s+", " ", layers.stdout + layers.stderr)
    assert "whisper-ct2 cannot give layers='last4'" in msg and "only the last encoder layer" in msg
    assert not (tmp_path / "w.zarr").exists() or not FeatureStore(tmp_path / "w.zarr").sets()

    decoded = [decode_audio(n, p) for n, p in zip(names, paths)]
    assert abs(decoded[4].seconds - 0.05) < 1e-3 and decoded[5].seconds == 1.0

    # ---- utterance level: the 88 eGeMAPSv02 functionals --------------------------------------
    fs = FeatureStore(utt)[UTT_SET]
    assert fs.level == "utt" and fs.dim == 88 and fs.dtype == "float16"
    assert sorted(fs.names()) == sorted(n for n in names if n != "short")
    failures = fs.failures()
    assert set(failures) == {"short"} and "0.050 s is too short for opensmile eGeMAPSv02" in failures["short"]
    kept = [c for c in decoded if c.name != "short"]
    x = fs.read([c.name for c in kept], dtype="float32")
    assert x.shape == (5, 88) and np.isfinite(x).all()
    ref = smile("func")
    columns = list(ref.feature_names)
    direct = np.stack([ref.process_signal(c.samples, SR).to_numpy(np.float32)[0] for c in kept])
    np.testing.assert_allclose(x, direct, **F16)
    assert np.abs(np.diff(x[:4], axis=0)).max() > 1.0  # four different speakers / emotions
    f0 = columns.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    assert (x[:4, f0] > 10).all() and x[4, f0] == 0  # speech is voiced; silence has no pitch
    assert x[4, columns.index("loudness_sma3_stddevNorm")] == 0  # silence: constant loudness
    prov = fs.provenance
    assert prov.extractor == "opensmile" and prov.model == "eGeMAPSv02" and prov.revision is None
    assert prov.config["feature_set"] == "eGeMAPSv02" and prov.config["level"] == "utt"
    assert prov.config["opensmile_version"] == opensmile.__version__
    assert prov.weights_hash.startswith("sha256:") and prov.decode["sample_rate"] == SR

    # ---- frame level: the 25 eGeMAPSv02 LLDs every 10 ms ---------------------------------------
    assert frames.returncode == 1 and report_row(frames) == (6, 5, 0, 1)
    fr = FeatureStore(frame)[FRAME_SET]
    assert fr.level == "frame" and fr.dim == 25 and "too short" in fr.failures()["short"]
    values, times = fr.read([c.name for c in kept], dtype="float32"), fr.read_times([c.name for c in kept])
    lld = smile("lld")
    for clip, v, t in zip(kept, values, times):
        n = len(clip.samples)
        T = (n - LONGEST_WINDOW) // HOP + 2  # frames of 10 ms hop while the 60 ms window fits, + the last
        assert v.shape == (T, 25) and np.isfinite(v).all(), clip.name
        np.testing.assert_allclose(t, np.arange(T) * 0.01, atol=1e-6)  # starts 0, 10 ms, 20 ms ...
        assert t[-1] + 0.06 <= clip.seconds + 0.0101  # the last window lies (but for the final hop) in the clip
        np.testing.assert_allclose(v, lld.process_signal(clip.samples, SR).to_numpy(np.float32), **F16)
    assert [len(v) for v in values[:4]] == [(len(c.samples) - LONGEST_WINDOW) // HOP + 2 for c in kept[:4]]
    # utterance functionals summarise the frames: the loudness mean is the mean of the loudness LLD
    loud = list(lld.feature_names).index("Loudness_sma3")
    np.testing.assert_allclose(x[:4, columns.index("loudness_sma3_amean")],
                               [v[:, loud].mean() for v in values[:4]], rtol=1e-2)


def test_config_resolves_feature_set_and_refuses_what_it_cannot_do():
    from mer.extractors import get_extractor
    from mer.extractors.whisper_ct2 import WhisperCT2Config

    cls = get_extractor("opensmile")
    cfg = cls.config_class()
    assert (cfg.model, cfg.feature_set) == ("eGeMAPSv02", "eGeMAPSv02")
    assert cls.config_class(model="ComParE_2016").feature_set == "ComParE_2016"
    assert cls.config_class(feature_set="GeMAPSv01b").model == "GeMAPSv01b"
    with pytest.raises(ValueError, match="disagree"):
        cls.config_class(model="eGeMAPSv02", feature_set="ComParE_2016")
    # dims come from the feature set's config, no audio processed
    dims = {(s, lv): cls(cls.config_class(feature_set=s, level=lv)).dim
            for s in ("eGeMAPSv02", "ComParE_2016") for lv in ("utt", "frame")}
    assert dims == {("eGeMAPSv02", "utt"): 88, ("eGeMAPSv02", "frame"): 25,
                    ("ComParE_2016", "utt"): 6373, ("ComParE_2016", "frame"): 65}
    with pytest.raises(ValueError, match="unknown opensmile feature set 'eGeMAPS3'.*eGeMAPSv02"):
        cls(cls.config_class(feature_set="eGeMAPS3"))

    assert "layers" not in WhisperCT2Config().identity()  # sets written before the option still match
    assert WhisperCT2Config(layers="LAST").layers == "last"
    with pytest.raises(ValueError, match="only the last encoder layer"):
        WhisperCT2Config(layers="-2")
