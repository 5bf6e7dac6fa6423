"""Issue 8, cases 1-3 (and a missing file path): broken media through ``mer extract``.

Real files written here (PyAV mp4s, WAVs, random bytes, cut-off files), tiny random models of the
real architectures (CLIPModel for video, HuBERT for audio), the real console script. Each bad clip
must be named with its problem, land in the ledger, make the exit code 1, and leave a store that
checks clean; the good clips must be done and correct. A file cut after its index keeps what
decodes before the cut: the report names it as partly decoded and the set records it per clip
(``partial_decode``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    SR,
    assert_failures,
    flat,
    mer,
    ok,
    report_counts,
    tiny,
    tone,
    write_table,
    write_wav,
)
from media import write_av
from mer.store import FeatureStore

pytest.importorskip("transformers")


def _cut(src: Path, dst: Path, fraction: float = 0.3) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[: int(len(raw) * fraction)])
    return dst


def test_case1_corrupt_truncated_empty_video(tmp_path):
    """Random bytes named .mp4, an mp4 cut before its index, a zero-byte file, a missing path:
    each fails with its own reason; an mp4 cut after its index keeps the frames before the cut."""
    m = tmp_path / "media"
    m.mkdir()
    write_av(m / "good.mp4")
    write_av(m / "good_fs.mp4", faststart=True)  # index (moov) first: a cut file still has frames
    (m / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    (m / "zero.mp4").write_bytes(b"")
    _cut(m / "good.mp4", m / "trunc.mp4")  # moov atom is at the end: lost with the tail
    _cut(m / "good_fs.mp4", m / "trunc_fs.mp4")
    names = ["good", "corrupt", "zero", "trunc", "trunc_fs", "missing"]
    rows = [{"name": n, "video": f"media/{n}.mp4"} for n in names]
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"

    res = mer("extract", "video", table.name, "--store", store.name, "-e", "clip", "-m", tiny("hfclip"),
              "--level", "frame", "--set", "frames", cwd=tmp_path)  # relative paths: short messages
    assert_failures(res, store, "video/frames", {
        "corrupt": "cannot open media/corrupt.mp4",
        "trunc": "cannot open media/trunc.mp4",
        "zero": "empty file (0 bytes): media/zero.mp4",
        "missing": "file not found: media/missing.mp4",
    })
    assert report_counts(res) == (6, 2, 0, 4)
    fs = FeatureStore(store)["video/frames"]
    assert sorted(fs.names()) == ["good", "trunc_fs"]
    good, cut = fs.read(["good", "trunc_fs"], dtype="float32")
    t_good, t_cut = fs.read_times(["good", "trunc_fs"])
    assert len(good) == 6 and np.allclose(t_good, np.arange(6) * 0.5, atol=0.05)  # 3 s at 2 fps
    assert 1 <= len(cut) < len(good) and t_cut.max() < 1.0  # only what precedes the cut
    np.testing.assert_allclose(cut, good[: len(cut)], atol=2e-3)  # the same frames give the same vectors
    # the partial file is not silent: the report names the clip and how much was kept, and the set
    # records it per clip
    assert ("partly decoded clip trunc_fs: decoded 0.80 s of video but the file declares 3.00 s "
            "(truncated file?); kept what decoded") in flat(res)
    assert fs.read_extra("partial_decode", ["trunc_fs", "good"]).tolist()[0] == 1.0
    assert np.isnan(fs.read_extra("partial_decode", ["good"])[0])


def test_case2_3_audio_no_track_short_silent_long(tmp_path):
    """A video without an audio track, audio shorter than the encoder's receptive field, silence,
    25 s of audio (three 10 s windows), plus corrupt / empty / missing audio files."""
    from mer.extractors.base import AudioClip
    from mer.extractors.hf_speech import HFSpeechConfig, HFSpeechExtractor

    m = tmp_path / "media"
    m.mkdir()
    write_av(m / "noaudio.mp4", audio=False)
    write_av(m / "with_audio.mp4")
    write_wav(m / "short.wav", tone(20 / SR))  # 20 samples: the tiny encoder needs 40 for one frame
    write_wav(m / "silence.wav", np.zeros(SR))
    long = tone(25.0, hz=250)
    write_wav(m / "long.wav", long)
    write_wav(m / "normal.wav", tone(1.0, hz=440))
    _cut(write_wav(m / "whole.wav", tone(3.0, hz=330)), m / "cutwav.wav")  # header still says 3 s
    _cut(write_av(m / "full.mp4", faststart=True), m / "cut.mp4")  # index first: the audio before the cut decodes
    (m / "corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(3000))
    (m / "zero.wav").write_bytes(b"")
    rows = [{"name": "noaudio", "audio": "", "video": "media/noaudio.mp4"},
            {"name": "fromvideo", "audio": "", "video": "media/with_audio.mp4"},
            {"name": "cut", "audio": "", "video": "media/cut.mp4"}]
    rows += [{"name": n, "audio": f"media/{n}.wav", "video": ""}
             for n in ("short", "silence", "long", "normal", "cutwav", "corrupt", "zero", "missing")]
    rows.append({"name": "nopath", "audio": "", "video": ""})
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    model = tiny("hubert")

    res = mer("extract", "audio", table.name, "--store", store.name, "-e", "hf-speech", "-m", model,
              "-O", "layers=last2", "--batch-size", "4", cwd=tmp_path)
    key = "audio/hf-speech-hubert-utt"
    assert_failures(res, store, key, {
        "noaudio": "no audio track in media/noaudio.mp4 (streams: video)",
        "corrupt": "cannot open media/corrupt.wav",
        "zero": "empty file (0 bytes)",
        "missing": "file not found: media/missing.wav",
        "nopath": "no audio or video path in the clip table",
    })
    assert report_counts(res) == (12, 7, 0, 5)
    fs = FeatureStore(store)[key]
    done = ["fromvideo", "short", "silence", "long", "normal", "cut", "cutwav"]
    assert sorted(fs.names()) == sorted(done)
    x = dict(zip(done, fs.read(done, dtype="float32")))
    assert all(np.isfinite(v).all() for v in x.values())
    # too short: zero-padded to one receptive field, and recorded per clip
    assert fs.read_extra("padded", ["short", "normal"]).tolist()[0] == 1.0
    assert np.isnan(fs.read_extra("padded", ["normal"])[0])
    # very long: processed in 10 s windows (recorded), the vector is the frame-weighted mean of the
    # windows; check it against the model run here on the same normalised samples, window by window
    assert fs.read_extra("windows", ["long"]).tolist() == [3.0]
    ext = HFSpeechExtractor(HFSpeechConfig(model=str(model), layers="last2", normalize=False, window_s=0))
    z = np.round(np.clip(long, -1, 1) * 32767) / 32768  # what the 16-bit WAV decodes to
    z = ((z - z.mean()) / np.sqrt(z.var() + 1e-7)).astype(np.float32)
    parts = [z[a:a + 10 * SR] for a in range(0, len(z), 10 * SR)]
    vecs = [f.values for f in ext.extract([AudioClip(f"w{i}", p) for i, p in enumerate(parts)])]
    weights = np.array([ext.output_frames(len(p)) for p in parts], np.float64)
    want = (np.stack(vecs) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(x["long"], want, atol=3e-3, rtol=3e-3)
    # a cut file keeps what decoded, says so, and is recorded per clip
    assert "partly decoded clip cut: audio decoding stopped after 0.72 s (InvalidDataError: " in flat(res)
    assert fs.read_extra("partial_decode", ["cut", "normal"])[0] == 1.0
    assert np.isnan(fs.read_extra("partial_decode", ["normal"])[0])
    # silence is a valid input: finite, and not the vector of a tone
    assert not np.allclose(x["silence"], x["normal"], atol=1e-2)
    # a WAV cut short decodes cleanly (FFmpeg sizes it by the file), but its header says 3 s
    assert "partly decoded clip cutwav: decoded 0.90 s of audio but cutwav.wav declares 3.00 s" in flat(res)
    assert fs.read_extra("partial_decode", ["cutwav"])[0] == 1.0


def test_case3_whisper_long_audio_in_30s_windows(tmp_path):
    """Real speech stretched past Whisper's 30 s input: the bundled encoder sees two windows, the
    stored frames are window one's 1,500 frames followed by window two's, on one time axis."""
    from mer.extractors.base import AudioClip
    from mer.extractors.whisper_ct2 import WhisperCT2, WhisperCT2Config
    from mer.pipeline.decode_audio import decode_audio

    from conftest import SAMPLE

    speech = decode_audio("s", sorted((SAMPLE / "audio").glob("*.flac"))[0]).samples
    long = np.tile(speech, int(np.ceil(34 * SR / len(speech))))[: 34 * SR]  # 34 s: 30 s + 4 s
    write_wav(tmp_path / "long.wav", long)
    table = write_table(tmp_path / "clips.csv", [{"name": "long", "audio": "long.wav"}])
    store = tmp_path / "s.zarr"
    ok(mer("extract", "audio", table.name, "--store", store.name, "-e", "whisper-ct2", "--level", "frame",
           "--set", "w", "--store-dtype", "float32", cwd=tmp_path))
    fs = FeatureStore(store)["audio/w"]
    (frames,), (times,) = fs.read(["long"]), fs.read_times(["long"])
    assert frames.shape == (34 * 50, 512)
    np.testing.assert_allclose(times, np.arange(34 * 50) / 50.0, atol=1e-4)
    z = decode_audio("long", tmp_path / "long.wav").samples
    ext = WhisperCT2(WhisperCT2Config(level="frame", batch_size=1))
    one, two = ext.extract([AudioClip("a", z[: 30 * SR]), AudioClip("b", z[30 * SR:])])
    assert one.values.shape[0] == 1500 and two.values.shape[0] == 200
    np.testing.assert_allclose(frames, np.concatenate([one.values, two.values]), atol=2e-3, rtol=2e-3)
