"""Audio / video decoding and face crops on real media files written with PyAV (no mocks)."""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mer.pipeline.decode_audio import AudioDecodeConfig, DecodeError, decode_audio, windows
from mer.pipeline.decode_video import VideoDecodeConfig, decode_video, select_frames
from mer.pipeline.faces import FaceCropper, center_square, crop_square, largest_face

REPO = Path(__file__).resolve().parents[1]
RAVDESS_AUDIO = REPO / "examples" / "ravdess" / "audio"

from media import FPS, H, SECONDS, TONE, W, write_av  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {
        "av": write_av(d / "with_audio.mp4"),
        "silent": write_av(d / "no_audio.mp4", audio=False),
        "wav": write_av(d / "tone.wav", video=False, audio_rate=22050, channels=1),
        "flac": write_av(d / "tone.flac", video=False, audio_rate=48000, channels=2),
        "faststart": write_av(d / "faststart.mp4", faststart=True),
    }
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    (d / "empty.mp4").write_bytes(b"")
    for key in ("av", "faststart"):
        raw = m[key].read_bytes()
        (d / f"trunc_{key}.mp4").write_bytes(raw[: int(len(raw) * 0.3)])
    m.update(random=d / "random.mp4", empty=d / "empty.mp4", trunc=d / "trunc_av.mp4",
             trunc_fs=d / "trunc_faststart.mp4", missing=d / "missing.mp4")
    return m


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# ---- audio --------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["av", "wav", "flac"])
def test_audio_decode_tone(media: dict[str, Path], key: str) -> None:
    clip = decode_audio("c1", media[key], AudioDecodeConfig())
    x = clip.samples
    assert clip.name == "c1" and clip.sample_rate == 16000
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    assert abs(len(x) - SECONDS * 16000) <= 0.02 * SECONDS * 16000
    assert abs(dominant_hz(x, 16000) - TONE) <= 5
    mid = x[len(x) // 4: 3 * len(x) // 4]
    # a 0.5 sine stays 0.5 after the down-mix (stereo is averaged, not summed)
    assert 0.4 <= np.abs(mid).max() <= 0.6
    assert np.abs(x).max() <= 1.0


def test_audio_config(media: dict[str, Path]) -> None:
    clip = decode_audio("c", media["av"], AudioDecodeConfig(sample_rate=8000, max_seconds=1.0))
    assert clip.sample_rate == 8000 and len(clip.samples) == 8000
    assert abs(dominant_hz(clip.samples, 8000) - TONE) <= 5
    assert AudioDecodeConfig().record() == {"sample_rate": 16000, "max_seconds": None}
    with pytest.raises(ValueError):
        AudioDecodeConfig(sample_rate=0)


def test_audio_no_track(media: dict[str, Path]) -> None:
    with pytest.raises(DecodeError, match="no audio track") as ei:
        decode_audio("silent-clip", media["silent"])
    assert ei.value.name == "silent-clip" and "silent-clip" in str(ei.value)
    assert str(ei.value).startswith("clip 'silent-clip': ")


@pytest.mark.parametrize("key, fragment", [("missing", "file not found"), ("empty", "0 bytes"),
                                           ("random", "cannot open")])
def test_audio_bad_files(media: dict[str, Path], key: str, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment) as ei:
        decode_audio(f"bad-{key}", media[key])
    assert ei.value.name == f"bad-{key}" and f"'bad-{key}'" in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("key", ["trunc", "trunc_fs"])
def test_audio_truncated(media: dict[str, Path], key: str, caplog: pytest.LogCaptureFixture) -> None:
    try:
        clip = decode_audio("cut", media[key])
    except DecodeError as exc:
        assert exc.name == "cut"
    else:  # partial decode: fewer samples, with a warning
        assert 0 < len(clip.samples) < SECONDS * 16000 * 0.9
        assert any("cut" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_cut_wav_is_reported_from_its_header(media: dict[str, Path], tmp_path: Path) -> None:
    from mer.pipeline.decode_audio import _wav_header_seconds

    whole = media["wav"]
    assert _wav_header_seconds(whole) == pytest.approx(SECONDS, abs=0.05)
    assert decode_audio("whole", whole).partial is None
    raw = whole.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: len(raw) // 4])
    clip = decode_audio("cutwav", cut)  # FFmpeg decodes it without complaint
    assert clip.partial is not None and f"declares {SECONDS:.2f} s (truncated file?)" in clip.partial
    streamed = tmp_path / "streamed.wav"  # a header written before the length was known
    i = raw.index(b"data")
    streamed.write_bytes(raw[: i + 4] + b"\xff\xff\xff\xff" + raw[i + 8:])
    assert _wav_header_seconds(streamed) is None and decode_audio("s", streamed).partial is None
    assert _wav_header_seconds(media["flac"]) is None


def test_windows() -> None:
    sr = 16000
    x = np.zeros(25 * sr, np.float32)
    parts = windows(x, sr, 10.0)
    assert [len(p) / sr for p in parts] == [10.0, 10.0, 5.0]
    assert windows(x[: 10 * sr], sr) and len(windows(x[: 10 * sr], sr)) == 1
    assert windows(x[:0], sr) == []
    with pytest.raises(ValueError):
        windows(x, sr, 0)


def test_real_speech_flac() -> None:
    files = sorted(RAVDESS_AUDIO.glob("*.flac"))
    if not files:
        pytest.skip("bundled RAVDESS sample not present")
    clip = decode_audio(files[0].stem, files[0])
    assert clip.sample_rate == 16000 and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert 2.0 <= clip.seconds <= 6.0
    assert 0.01 < np.abs(clip.samples).max() <= 1.0


# ---- video --------------------------------------------------------------------------------
def test_video_fps(media: dict[str, Path]) -> None:
    clip = decode_video("v", media["av"], VideoDecodeConfig(fps=2.0))
    assert clip.name == "v" and clip.faces is None
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (H, W, 3)
    assert abs(len(clip.frames) - 6) <= 1 and len(clip.times) == len(clip.frames)
    assert clip.times.dtype == np.float32
    assert np.all(np.diff(clip.times) > 0) and clip.times[0] >= 0 and clip.times[-1] <= SECONDS
    assert np.allclose(np.diff(clip.times), 0.5, atol=0.05)
    # frames really are the ones at those times (red channel encodes the frame index)
    idx = np.round(clip.times * FPS).astype(int)
    assert np.allclose(clip.frames[..., 0].mean(axis=(1, 2)), np.minimum(255, idx * 3), atol=6)


def test_video_num_frames_and_size(media: dict[str, Path]) -> None:
    clip = decode_video("v", media["av"], VideoDecodeConfig(num_frames=4))
    assert clip.frames.shape == (4, H, W, 3)
    gaps = np.diff(clip.times)
    assert np.all(gaps > 0) and gaps.max() - gaps.min() <= 1.5 / FPS
    assert clip.times[0] < SECONDS / 4 < clip.times[1]
    # num_frames wins over fps, and is what gets recorded
    cfg = VideoDecodeConfig(fps=10.0, num_frames=4, size=24)
    assert cfg.record() == {"fps": None, "num_frames": 4, "size": 24, "faces": False, "face_size": 224}
    small = decode_video("v", media["av"], cfg)
    assert small.frames.shape == (4, 24, 32, 3)  # shorter side (48 -> 24), aspect kept
    assert np.allclose(small.times, clip.times)
    allf = decode_video("v", media["av"], VideoDecodeConfig(fps=None))
    assert len(allf.frames) == FPS * SECONDS


def test_select_frames() -> None:
    starts = np.arange(75) / 25
    assert select_frames(starts, 3.0, 2.0, None).tolist() == [0, 12, 25, 37, 50, 62]
    assert select_frames(starts, 3.0, None, 4).tolist() == [9, 28, 46, 65]
    assert select_frames(starts, 3.0, 100.0, None).tolist() == list(range(75))  # no repeats
    assert len(select_frames(starts[:2], 0.08, None, 5)) == 5  # repeats to keep T fixed
    shuffled = starts[::-1].copy()
    assert select_frames(shuffled, 3.0, 2.0, None).tolist() == [74, 62, 49, 37, 24, 12]


def test_video_without_audio_decodes(media: dict[str, Path]) -> None:
    clip = decode_video("v", media["silent"], VideoDecodeConfig(num_frames=3))
    assert clip.frames.shape == (3, H, W, 3)


@pytest.mark.parametrize("key, fragment", [("missing", "file not found"), ("empty", "0 bytes"),
                                           ("random", "cannot open"), ("wav", "no video track")])
def test_video_bad_files(media: dict[str, Path], key: str, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment) as ei:
        decode_video("bad", media[key])
    assert ei.value.name == "bad"


@pytest.mark.parametrize("key", ["trunc", "trunc_fs"])
def test_video_truncated(media: dict[str, Path], key: str) -> None:
    try:
        clip = decode_video("cut", media[key], VideoDecodeConfig(fps=None))
    except DecodeError as exc:
        assert exc.name == "cut"
    else:  # partial decode
        assert 0 < len(clip.frames) < FPS * SECONDS and len(clip.times) == len(clip.frames)
        assert np.all(np.diff(clip.times) > 0)


def test_decode_in_threads(media: dict[str, Path], tmp_path: Path) -> None:
    paths = []
    for i in range(6):
        p = tmp_path / f"copy{i}.mp4"
        shutil.copy(media["av"], p)
        paths.append(p)
    cfg = VideoDecodeConfig(num_frames=5)
    ref_v = decode_video("ref", media["av"], cfg).frames
    ref_a = decode_audio("ref", media["av"]).samples
    with ThreadPoolExecutor(4) as pool:
        vids = list(pool.map(lambda p: decode_video(p.stem, p, cfg), paths))
        auds = list(pool.map(lambda p: decode_audio(p.stem, p), paths))
    assert all(np.array_equal(v.frames, ref_v) for v in vids)
    assert all(np.array_equal(a.samples, ref_a) for a in auds)


# ---- faces --------------------------------------------------------------------------------
def test_face_fallback_without_face(media: dict[str, Path]) -> None:
    frames = np.full((3, 48, 64, 3), 90, np.uint8)
    out, n = FaceCropper(face_size=32).crop(frames)
    assert n == 0 and out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    clip = decode_video("v", media["av"], VideoDecodeConfig(num_frames=2, faces=True, face_size=40))
    assert clip.frames.shape == (2, 40, 40, 3) and clip.faces == 0


def test_crop_geometry() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[40:60, 120:140] = (255, 0, 0)  # the "face": a 20x20 red square
    out = crop_square(frame, (120, 40, 20, 20), size=28, margin=0.2)  # 28 px side, no resize
    assert out.shape == (28, 28, 3)
    assert (out[..., 0] == 255).sum() == 400 and out[14, 14, 0] == 255  # centred, whole
    edge = crop_square(frame, (190, 90, 20, 20), size=16, margin=0.5)  # crosses the corner
    assert edge.shape == (16, 16, 3)
    big = crop_square(frame, (0, 0, 200, 100), size=50)  # capped at the shorter side
    assert big.shape == (50, 50, 3)
    frame[:, :50] = 7
    frame[:, 150:] = 7
    assert (center_square(frame, 100) != 7).all(axis=-1).all()  # the middle 100x100, unresized


def test_face_detect_real_photo() -> None:
    try:
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (ImportError, OSError, ValueError):
        pytest.skip("matplotlib sample photo not available")
    import cv2

    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    box = largest_face(img)
    assert box is not None
    x, y, w, h = box
    assert 0.2 < w / img.shape[1] < 0.8 and x < img.shape[1] / 2 < x + w
    frames = np.stack([img, np.full_like(img, 90)])
    out, n = FaceCropper(face_size=112).crop(frames)
    assert n == 1 and out.shape == (2, 112, 112, 3)
