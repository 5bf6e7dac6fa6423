"""Video decoding on real footage and on hard synthetic input: frame times on the clip clock shared
with the audio, frames equal to a plain sequential decode, rotation, 4K memory, empty and damaged
files, and decoding in parallel threads in the video stage.

The real clips are ``../shared/data/video`` (see its README); their tests skip when it is absent.
Synthetic clips are written with PyAV (``media.py``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import HANG_S, mer_cli, write_csv
from media import corrupt_middle, timed_image, write_timed, write_video_without_frames
from mer.pipeline.decode_audio import decode_audio
from mer.pipeline.decode_video import DecodeError, VideoDecodeConfig, decode_video

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
REAL = ["fer_test", "fer_woman2", "vf_GGSY1Qvo990", "vf_ZNVhz7ctTq0"]
WITH_AUDIO = ["vf_GGSY1Qvo990", "vf_ZNVhz7ctTq0"]
needs_real = pytest.mark.skipif(not all((VIDEO / f"{n}.mp4").is_file() for n in REAL),
                                reason=f"real clips not found in {VIDEO} (shared data not mounted)")


def pyav_frames(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every frame of the first video stream, decoded in order: times on the clip clock and RGB."""
    with av.open(str(path)) as c:
        zero = min(float(s.start_time * s.time_base) for s in c.streams if s.type in ("audio", "video"))
        frames = list(c.decode(video=0))
        return (np.array([float(f.time) - zero for f in frames]),
                [f.to_ndarray(format="rgb24") for f in frames])


def container_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        return c.duration / av.time_base


# ---- real clips -------------------------------------------------------------------------------
@needs_real
@pytest.mark.parametrize("name", REAL)
def test_real_clip_times_and_frames(name: str) -> None:
    path = VIDEO / f"{name}.mp4"
    ref_times, ref_frames = pyav_frames(path)
    duration = container_seconds(path)

    every = decode_video(name, path, VideoDecodeConfig(fps=None))
    assert len(every.times) == len(ref_times) and every.partial is None
    np.testing.assert_allclose(every.times, ref_times, atol=1e-4)  # the real timestamps, on the clip clock
    assert np.all(np.diff(every.times) > 0) and every.times[0] >= 0 and every.times[-1] <= duration

    two = decode_video(name, path, VideoDecodeConfig(fps=2.0))
    assert np.all(np.diff(two.times) > 0) and two.times[0] == 0 and two.times[-1] <= duration
    frame_s = float(np.median(np.diff(ref_times)))
    assert np.all(np.abs(np.diff(two.times) - 0.5) <= frame_s + 1e-3)  # one frame every 0.5 s
    assert abs(len(two.times) - duration * 2) <= 2
    # seeking to keyframes returns exactly the frames a sequential decode shows at those times
    at = np.searchsorted(ref_times, two.times - 1e-4)
    np.testing.assert_array_equal(two.frames, np.stack([ref_frames[i] for i in at]))

    small = decode_video(name, path, VideoDecodeConfig(fps=2.0, size=224))
    assert small.frames.shape[0] == len(two.times) and min(small.frames.shape[1:3]) == 224
    np.testing.assert_array_equal(small.times, two.times)
    # resized while converting, close to resizing the full frame (area averaging both ways)
    from mer.pipeline.decode_video import resize_shorter
    ref_small = resize_shorter(two.frames[len(two.frames) // 2], 224)
    assert np.abs(ref_small.astype(int) - small.frames[len(two.frames) // 2]).mean() < 3


@needs_real
@pytest.mark.parametrize("name", WITH_AUDIO)
def test_real_audio_track_starts_with_the_picture(name: str) -> None:
    clip = decode_audio(name, VIDEO / f"{name}.mp4")
    assert clip.offset == 0.0 and abs(clip.seconds - container_seconds(VIDEO / f"{name}.mp4")) < 0.1


# ---- one clock for audio and video ------------------------------------------------------------
@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("timed")
    rng = np.random.default_rng(0)
    vfr = np.concatenate([[0.0], np.cumsum(rng.uniform(0.02, 0.12, 59))]).round(3)
    return {
        "late_audio_aac": write_timed(d / "late_audio.mp4", audio_start=1.0),
        "late_audio_pcm": write_timed(d / "late_audio.mov", audio_start=1.0, audio_codec="pcm_s16le"),
        "late_video": write_timed(d / "late_video.mp4", 0.3 + np.arange(75) / 25, audio_start=0.0),
        "vfr": write_timed(d / "vfr.mp4", vfr),
    }


def tone_onset(clip) -> float:
    """Clip-clock time where the 0.5-amplitude tone begins."""
    return clip.offset + int(np.argmax(np.abs(clip.samples) > 0.1)) / clip.sample_rate


@pytest.mark.parametrize("key", ["late_audio_aac", "late_audio_pcm"])
def test_late_audio_has_its_offset(timed: dict[str, Path], key: str) -> None:
    audio = decode_audio(key, timed[key])
    # AAC's encoder delay puts the first (silent) samples 1024 / 16000 s before the tone
    assert audio.offset == pytest.approx(1.0, abs=0.07 if "aac" in key else 1e-6)
    assert tone_onset(audio) == pytest.approx(1.0, abs=0.01)
    video = decode_video(key, timed[key], VideoDecodeConfig(fps=None))
    assert video.times[0] == 0 and video.times[1] == pytest.approx(0.04, abs=1e-4)


def test_late_video_starts_after_the_audio(timed: dict[str, Path]) -> None:
    video = decode_video("lv", timed["late_video"], VideoDecodeConfig(fps=None))
    np.testing.assert_allclose(video.times, 0.3 + np.arange(75) / 25, atol=1e-3)
    assert decode_video("lv", timed["late_video"], VideoDecodeConfig(fps=2.0)).times[0] == pytest.approx(0.3, abs=1e-3)
    audio = decode_audio("lv", timed["late_video"])
    assert audio.offset == 0.0 and tone_onset(audio) == pytest.approx(0.0, abs=0.01)


def test_variable_frame_rate_keeps_real_times(timed: dict[str, Path]) -> None:
    with av.open(str(timed["vfr"])) as c:
        written = np.array([float(f.time) for f in c.decode(video=0)])
    every = decode_video("vfr", timed["vfr"], VideoDecodeConfig(fps=None))
    np.testing.assert_allclose(every.times, written, atol=1e-4)
    two = decode_video("vfr", timed["vfr"], VideoDecodeConfig(fps=2.0))
    # the frame showing at each 0.5 s: the last one starting at or before it
    for t, got in zip(np.arange(len(two.times)) * 0.5, two.times):
        assert got == pytest.approx(written[written <= t + 1e-6].max(), abs=1e-4)


@pytest.mark.parametrize("extractor", ["hf-speech", "opensmile"])
def test_cli_audio_frame_times_start_at_the_audio_offset(tmp_path: Path, timed: dict[str, Path],
                                                         extractor: str) -> None:
    from mer.store import FeatureStore

    if extractor == "hf-speech":
        pytest.importorskip("transformers")
        from tiny_models import build_hubert

        opts = ["-m", str(build_hubert(tmp_path / "hubert")), "-O", "layers=last2", "-O", "layer_pool=sum"]
    else:
        pytest.importorskip("opensmile")
        opts = []  # eGeMAPSv02 LLDs
    rows = [{"name": "pcm", "audio": "", "video": str(timed["late_audio_pcm"])},
            {"name": "aac", "audio": "", "video": str(timed["late_audio_aac"])}]
    table = write_csv(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    res = subprocess.run([*mer_cli(), "extract", "audio", str(table), "--store", str(store), "-e", extractor, *opts,
                          "--level", "frame", "--set", "late"], capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout + res.stderr
    fs = FeatureStore(store)["audio/late"]
    pcm, aac = fs.read_times(["pcm", "aac"])
    assert pcm[0] == pytest.approx(1.0, abs=1e-4) and np.all(np.diff(pcm) > 0)
    assert aac[0] == pytest.approx(decode_audio("aac", timed["late_audio_aac"]).offset, abs=1e-4)


@pytest.mark.parametrize("extractor", ["opensmile", "whisper-ct2"])
def test_audio_extractors_give_times_from_the_first_sample(extractor: str) -> None:
    """Extractors do not add the offset: the stage does, in one place (``stage.clip_clock``)."""
    from mer.extractors.base import AudioClip, ModelLoadError, get_extractor
    from mer.pipeline.stage import StageSpec, build_extractor, clip_clock

    spec = StageSpec(modality="audio", clips=Path("."), store=Path("."), extractor=extractor,
                     config={"level": "frame", "batch_size": 2})
    try:
        ext = build_extractor(spec)
    except (ModelLoadError, ValueError) as exc:  # optional package or bundled model not installed
        pytest.skip(f"{extractor} not available: {exc}")
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000) / 16000)).astype(np.float32)
    late = AudioClip("b", x, offset=1.0)
    at0, at1 = ext.extract([AudioClip("a", x), late])
    np.testing.assert_array_equal(at1.times, at0.times)
    np.testing.assert_allclose(at1.values, at0.values, atol=1e-5)
    assert at0.times[0] == 0 and get_extractor(extractor).modality == "audio"
    moved = clip_clock(late, at1.times)
    np.testing.assert_allclose(moved, at0.times + 1.0, atol=1e-6)
    assert moved.dtype == at1.times.dtype and clip_clock(AudioClip("a", x), at0.times) is at0.times


# ---- bad input --------------------------------------------------------------------------------
def test_video_stream_without_frames(tmp_path: Path) -> None:
    path = write_video_without_frames(tmp_path / "noframes.avi")
    with pytest.raises(DecodeError, match="the video track of .*noframes.avi has no frames") as ei:
        decode_video("empty-track", path)
    assert ei.value.name == "empty-track" and str(ei.value).startswith("clip 'empty-track': ")


@pytest.mark.parametrize("degrees, up", [(90, "bottom-left"), (-90, "top-right")])
def test_rotated_phone_video_is_upright(tmp_path: Path, degrees: int, up: str) -> None:
    path = write_timed(tmp_path / f"rot{degrees}.mp4", seconds=1, rotation=degrees)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation == degrees  # the file carries the display matrix
    clip = decode_video("phone", path, VideoDecodeConfig(fps=None))
    assert clip.frames.shape[1:] == (64, 48, 3)  # coded 64 wide x 48 high, shown 48 wide x 64 high
    # the block coded top-left, turned by the display matrix (counter-clockwise for positive angles)
    blue = clip.frames[3, ..., 2].astype(int)
    corner = {"bottom-left": blue[-16:, :12], "top-right": blue[:16, -12:]}[up]  # 12 x 16 coded, turned
    assert corner.mean() > 200 and blue.mean() < 120
    expected = np.rot90(timed_image(3), 1 if degrees > 0 else -1)
    assert np.abs(clip.frames[3].astype(int) - expected).mean() < 8
    small = decode_video("phone", path, VideoDecodeConfig(fps=2.0, size=24))
    assert small.frames.shape[1:] == (32, 24, 3)  # shorter side 24, still upright


ONE, W30 = 65536, 1 << 30  # FFmpeg's display matrix: 16.16 fixed point, last column 2.30


@pytest.mark.parametrize("matrix, rotation, shown", [
    ([-ONE, 0, 0, 0, ONE, 0, 0, 0, W30], -180, lambda img: img[:, ::-1]),  # mirrored left-right
    ([ONE, 0, 0, 0, -ONE, 0, 0, 0, W30], 0, lambda img: img[::-1]),  # mirrored top-bottom
    ([0, ONE, 0, ONE, 0, 0, 0, 0, W30], -90, lambda img: img.transpose(1, 0, 2)),  # turned and mirrored
    ([-ONE, 0, 0, 0, -ONE, 0, 0, 0, W30], -180, lambda img: img[::-1, ::-1]),  # turned 180 degrees
], ids=["hflip", "vflip", "transpose", "rot180"])
def test_mirrored_video_is_shown_as_ffmpeg_shows_it(tmp_path: Path, matrix: list[int], rotation: int,
                                                    shown) -> None:
    """A mirrored display matrix (front cameras) reads as a turn to FFmpeg's angle (a left-right
    mirror as 180 degrees); the frames must come out mirrored, as ``ffmpeg``'s autorotation shows
    them, not upside down."""
    path = write_timed(tmp_path / "mirror.mp4", seconds=1, display_matrix=matrix)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation == rotation  # what the angle alone would say
    clip = decode_video("selfie", path, VideoDecodeConfig(fps=None))
    expected = shown(timed_image(3))
    assert clip.frames.shape[1:] == expected.shape
    assert np.abs(clip.frames[3].astype(int) - expected).mean() < 8
    small = decode_video("selfie", path, VideoDecodeConfig(fps=2.0, size=24))
    assert min(small.frames.shape[1:3]) == 24 and small.frames.shape[1:3] == tuple(
        round(24 * x / min(expected.shape[:2])) for x in expected.shape[:2])


def test_4k_clip_memory_is_bounded_by_the_sampled_frames(tmp_path: Path) -> None:
    n, fps = 32, 8
    path = write_timed(tmp_path / "uhd.mp4", seconds=n / fps, fps=fps, size=(3840, 2160), preset="ultrafast")
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from mer.pipeline.decode_video import VideoDecodeConfig, decode_video
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        clip = decode_video("uhd", Path(sys.argv[1]), VideoDecodeConfig(fps=2.0, size=224))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(*clip.frames.shape, (after - before) * 1024, clip.partial)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    t, h, w, ch, grew, partial = res.stdout.split()
    assert (int(t), int(h), int(w), int(ch)) == (8, 224, 398, 3) and partial == "None"
    every_frame = n * 3840 * 2160 * 3  # what holding all decoded frames at 4K would take (~800 MB)
    assert int(grew) < every_frame / 6, f"peak RSS grew {int(grew) / 2**20:.0f} MiB"


def test_broken_middle_keeps_both_sides(tmp_path: Path) -> None:
    good = write_timed(tmp_path / "good.mp4", seconds=4, size=(160, 120), gop=25)
    broken = tmp_path / "broken.mp4"
    corrupt_middle(good, broken, 0.4, 0.55)
    clip = decode_video("broken", broken, VideoDecodeConfig(fps=None))
    assert clip.partial and "damaged video packets" in clip.partial and "resumed at the keyframe" in clip.partial
    assert np.all(np.diff(clip.times) > 0) and 20 < len(clip.times) < 100
    assert clip.times[0] == 0 and clip.times[-1] == pytest.approx(3.96, abs=1e-3)  # frames after the damage too
    gaps = np.diff(clip.times)
    assert gaps.max() > 0.2  # the damaged span is left out, not filled with broken pictures
    # every frame kept is the right picture (red encodes the frame index: 2 * i)
    idx = np.round(clip.times * 25).astype(int)
    np.testing.assert_allclose(clip.frames[..., 0].mean(axis=(1, 2)), np.minimum(254, 2 * idx), atol=4)
    two = decode_video("broken", broken, VideoDecodeConfig(fps=2.0, size=24))
    assert two.partial == clip.partial and np.all(np.diff(two.times) > 0)
    assert two.times[0] < 1.5 and two.times[-1] > 3.0 and two.frames.shape[1:] == (24, 32, 3)


# ---- decoding ahead of the model, in threads ---------------------------------------------------
@needs_real
def test_video_stage_decodes_in_parallel_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("transformers")
    from conftest import one_torch_thread
    from tiny_models import build_hf_clip

    from mer.pipeline.inputs import DecodeSettings
    from mer.pipeline.stage import StageSpec, run_stage

    model = build_hf_clip(tmp_path / "clip")
    rows = [{"name": n, "video": str((VIDEO / f"{n}.mp4").resolve())} for n in REAL]
    spec = StageSpec(modality="video", clips=write_csv(tmp_path / "clips.csv", rows), store=tmp_path / "s.zarr",
                     extractor="clip", config={"model": str(model), "batch_size": 2},
                     decode=DecodeSettings(video=VideoDecodeConfig(fps=2.0, size=64)), decode_threads=2)
    caplog.set_level(logging.DEBUG, logger="mer.pipeline.video_reader")
    with one_torch_thread():
        report = run_stage(spec, progress=False)
    assert report.done == len(REAL) and not report.failed
    spans = [(r.threadName, r.created - r.args[-1], r.created) for r in caplog.records
             if r.name == "mer.pipeline.video_reader" and "frames decoded from" in r.getMessage()]
    assert len(spans) == len(REAL)
    threads = {t for t, _, _ in spans}
    assert len(threads) == 2 and all(t.startswith("decode") for t in threads), threads
    overlap = any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans)
    assert overlap, spans  # two clips were being decoded at the same time


def test_4k_clip_with_faces_is_scanned_at_the_face_scan_size(tmp_path: Path) -> None:
    """With --faces the frames are not kept at 4K: they are shrunk to face_scan_size while decoding
    (boxes are fractions of the frame, so they do not depend on it), and peak memory stays small."""
    n, fps = 32, 8
    path = write_timed(tmp_path / "uhd.mp4", seconds=n / fps, fps=fps, size=(3840, 2160), preset="ultrafast")
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from mer.pipeline.decode_video import VideoDecodeConfig, decode_video
        from mer.pipeline.video_reader import FrameShape
        import av
        cfg = VideoDecodeConfig(fps=2.0, faces=True, face_detector="none", face_size=112)
        with av.open(sys.argv[1]) as c:
            shape = FrameShape(cfg)
            img = shape.rgb(next(c.decode(video=0)))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        clip = decode_video("uhd", Path(sys.argv[1]), cfg)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(*img.shape, *clip.frames.shape, (after - before) * 1024)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=HANG_S,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    h, w, _, t, s1, s2, _, grew = map(int, res.stdout.split())
    assert (h, w) == (720, 1280) and (t, s1, s2) == (8, 112, 112)
    # the 8 sampled frames held at 4K would take ~200 MB on top of FFmpeg's own 4K decode buffers
    # (~45-60 MiB here, also without faces); measured +62 MiB in all (2026-12-03)
    every_frame = 8 * 3840 * 2160 * 3
    assert grew < every_frame / 2, f"peak RSS grew {grew / 2**20:.0f} MiB"
    small = VideoDecodeConfig(faces=True, face_scan_size=None)  # full size on request
    assert small.face_scan_size is None
    with pytest.raises(ValueError, match="face_scan_size"):
        VideoDecodeConfig(faces=True, face_scan_size=100, face_size=224)


def test_decode_threads_option_sets_the_decode_pool(tmp_path: Path) -> None:
    """``mer extract video --decode-threads 1``: every clip is decoded by the one decode thread."""
    pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from conftest import one_torch_thread
    from tiny_models import build_hf_clip

    from mer.pipeline.cli import app

    model = build_hf_clip(tmp_path / "clip")
    rows = [{"name": f"c{i}", "video": str(write_timed(tmp_path / f"c{i}.mp4", seconds=1, size=(64, 48)))}
            for i in range(3)]
    table = write_csv(tmp_path / "clips.csv", rows)
    threads: list[str] = []

    class Collect(logging.Handler):  # on the decoder's own logger: the CLI resets the root handlers
        def emit(self, record: logging.LogRecord) -> None:
            if "frames decoded from" in record.getMessage():
                threads.append(record.threadName)

    logger = logging.getLogger("mer.pipeline.video_reader")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with one_torch_thread():
            res = CliRunner().invoke(app, ["extract", "video", str(table), "--store", str(tmp_path / "s.zarr"),
                                           "-e", "clip", "-m", str(model), "--size", "32", "--decode-threads", "1"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert res.exit_code == 0, res.output
    assert len(threads) == 3 and set(threads) == {"decode_0"}, threads
