"""Face detection, tracking and crops on real footage (../shared/data/video): MTCNN (facenet-pytorch,
weights inside its wheel), OpenCV's Haar cascade and the ``none`` detector; ``--require-face``
through the real ``mer extract video`` with a tiny random CLIP. No mocks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S, mer_cli, write_csv
from mer.pipeline.decode_errors import DecodeError
from mer.pipeline.decode_video import VideoDecodeConfig, decode_video
from mer.pipeline.face_detectors import get_detector, mtcnn_available
from mer.pipeline.faces import FaceCropper, FaceTrack, box_iou, center_square, track_faces

VIDEO = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
CLOSE_UPS = ("fer_test", "fer_woman2")  # one face each, close up
NO_FACE = "vf_ZNVhz7ctTq0"  # a dog and a far-away child on a path: MTCNN finds no face (Haar: one false hit)

pytestmark = [
    pytest.mark.skipif(not VIDEO.is_dir(), reason=f"real video clips not present ({VIDEO.resolve()})"),
    pytest.mark.skipif(not mtcnn_available(), reason="facenet-pytorch not installed "
                       "(pip install --no-deps 'facenet-pytorch==2.6.0')"),
]


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    """The close-ups decoded at 2 fps (10 and 31 frames)."""
    return {n: decode_video(n, VIDEO / f"{n}.mp4", VideoDecodeConfig(fps=2.0)).frames for n in CLOSE_UPS}


@pytest.fixture(scope="module")
def tracks(frames) -> dict[tuple[str, str], FaceTrack]:
    """Face tracks of each close-up with MTCNN and Haar."""
    return {(n, d): FaceCropper(face_size=64, detector=d).track(f)
            for n, f in frames.items() for d in ("mtcnn", "haar")}


def test_mtcnn_finds_the_close_up_faces(frames, tracks) -> None:
    for name, f in frames.items():
        tr = tracks[name, "mtcnn"]
        fraction = tr.found / len(f)
        assert fraction >= 0.9, f"{name}: MTCNN kept a face in {tr.found} of {len(f)} frames"
        assert tr.crops.shape == (len(f), 64, 64, 3) and tr.detector == "mtcnn"
        hit = np.isfinite(tr.boxes[:, 0])
        assert np.all(tr.scores[hit] >= 0.9) and np.all(tr.scores[~hit] == 0)


def test_haar_and_mtcnn_boxes_agree(frames, tracks) -> None:
    for name in frames:
        m, h = tracks[name, "mtcnn"].boxes, tracks[name, "haar"].boxes
        both = np.isfinite(m[:, 0]) & np.isfinite(h[:, 0])
        ious = np.array([box_iou(a, b[None])[0] for a, b in zip(m[both], h[both])])
        stats = f"{name}: {both.sum()} frames with both, IoU min {ious.min():.3f} mean {ious.mean():.3f}"
        assert both.sum() >= 0.8 * len(m), stats
        assert ious.min() >= 0.5, stats


def test_tracking_keeps_the_first_face_when_a_larger_one_appears(frames) -> None:
    """From frame K on, a larger face (cut from fer_test) is pasted beside the woman of fer_woman2:
    the tracker stays on her; picking the best face per frame would jump to the pasted one."""
    woman, donor = frames["fer_woman2"][:8].copy(), frames["fer_test"][0]
    mtcnn = get_detector("mtcnn")
    own = mtcnn.detect(woman)  # her face alone, in every frame
    assert all(len(d) == 1 for d in own)
    x0, y0, x1, y1 = (int(v) for v in mtcnn.detect(donor[None])[0][0, :4])
    import cv2

    face = donor[max(0, y0 - 20):y1 + 20, max(0, x0 - 20):x1 + 20]
    big = cv2.resize(face, None, fx=1.4, fy=1.4, interpolation=cv2.INTER_LINEAR)
    bh, bw = big.shape[:2]
    assert bh <= woman.shape[1] - 10 and bw <= 220, big.shape  # fits left of her face (x >= 227)
    k = 3
    woman[k:, 10:10 + bh, 5:5 + bw] = big
    found = mtcnn.detect(woman)
    assert all(len(d) == 2 for d in found[k:]), [len(d) for d in found]
    # the pasted face wins the acquisition rule (score x area), so only tracking keeps her
    for d in found[k:]:
        best = d[np.argmax(d[:, 4] * (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1]))]
        assert best[0] < 227
    tr = FaceCropper(face_size=64, detector=mtcnn).track(woman)
    assert tr.found == len(woman)
    w, h = woman.shape[2], woman.shape[1]
    for i, (box, mine) in enumerate(zip(tr.boxes, own)):
        iou = box_iou(box * [w, h, w, h], mine)[0]
        assert iou >= 0.5, f"frame {i}: kept box {box} is not her face (IoU {iou:.2f})"
    # with no overlapping face for a while (she leaves), the tracker re-acquires the other face
    gone = [found[0]] + [d[d[:, 0] < 227] for d in found[k:]]
    picks = track_faces(gone, reacquire_after=3)
    assert picks[1:4] == [None, None, None] and picks[4] == 0


def test_none_detector_gives_centre_squares(frames) -> None:
    f = frames["fer_test"][:4]
    tr = FaceCropper(face_size=48, detector="none").track(f)
    assert tr.found == 0 and tr.detector == "none"
    np.testing.assert_array_equal(tr.crops, np.stack([center_square(x, 48) for x in f]))
    assert np.isnan(tr.boxes).all() and (tr.scores == 0).all()
    clip = decode_video("t", VIDEO / "fer_test.mp4",
                        VideoDecodeConfig(num_frames=3, faces=True, face_size=48, face_detector="none"))
    assert clip.faces == 0 and clip.frames.shape == (3, 48, 48, 3)
    assert np.isnan(clip.frame_extras["face_x0"]).all() and (clip.frame_extras["face_score"] == 0).all()


def test_frame_extras_and_provenance() -> None:
    cfg = VideoDecodeConfig(num_frames=5, faces=True, face_size=40, face_margin=0.3)
    clip = decode_video("w", VIDEO / "fer_woman2.mp4", cfg)
    assert clip.faces == 5
    ex = clip.frame_extras
    assert sorted(ex) == ["face_score", "face_x0", "face_x1", "face_y0", "face_y1"]
    for v in ex.values():
        assert v.shape == clip.times.shape == (5,) and v.dtype == np.float32
    boxes = np.stack([ex["face_x0"], ex["face_y0"], ex["face_x1"], ex["face_y1"]], 1)
    assert np.all((boxes >= 0) & (boxes <= 1))
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all((ex["face_score"] >= 0.9) & (ex["face_score"] <= 1))
    rec = cfg.record()  # what ran, not "auto"
    assert rec["face_detector"] == "mtcnn" and rec["face_margin"] == 0.3 and rec["require_face"] is False
    assert "face_detector" not in VideoDecodeConfig().record()  # no face settings without --faces
    assert "face_device" not in rec and rec == VideoDecodeConfig(**{**cfg.__dict__, "face_device": "cuda"}).record()
    with pytest.raises(ValueError, match="require_face needs faces"):
        VideoDecodeConfig(require_face=True)
    with pytest.raises(ValueError, match="face_detector must be one of"):
        VideoDecodeConfig(faces=True, face_detector="yolo")


def test_missing_facenet_is_a_clear_error() -> None:
    """With facenet_pytorch unimportable (blocked in a fresh interpreter): ``mtcnn`` says how to
    install it, ``auto`` falls back to Haar."""
    code = ("import sys; sys.modules['facenet_pytorch'] = None\n"
            "from mer.pipeline.face_detectors import get_detector, resolve_detector\n"
            "assert resolve_detector('auto') == 'haar'\n"
            "try:\n    get_detector('mtcnn')\nexcept ImportError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    assert "pip install --no-deps 'facenet-pytorch==2.6.0'" in res.stdout and "--face-detector haar" in res.stdout


def test_auto_is_resolved_where_the_settings_are_made(tmp_path) -> None:
    """``auto`` becomes ``mtcnn`` in the config itself: a (dask) worker that unpickles it without
    facenet-pytorch fails saying how to install it, instead of running Haar under an mtcnn provenance."""
    import pickle

    cfg = VideoDecodeConfig(num_frames=2, faces=True)
    assert cfg.face_detector == "mtcnn" and VideoDecodeConfig().face_detector == "auto"  # no faces: untouched
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    code = ("import pickle, sys; sys.modules['facenet_pytorch'] = None\n"
            "from mer.pipeline.decode_video import decode_video\n"
            f"cfg = pickle.loads(open({str(tmp_path / 'cfg.pkl')!r}, 'rb').read())\n"
            "assert cfg.face_detector == 'mtcnn'\n"
            "try:\n"
            f"    decode_video('w', {str(VIDEO / 'fer_woman2.mp4')!r}, cfg)\n"
            "except ImportError as e:\n    print('refused:', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused:") and "facenet-pytorch" in res.stdout


def test_no_face_clip_decodes_unless_required() -> None:
    path = VIDEO / f"{NO_FACE}.mp4"
    clip = decode_video(NO_FACE, path, VideoDecodeConfig(num_frames=4, faces=True, face_size=32))
    assert clip.faces == 0 and clip.frames.shape == (4, 32, 32, 3)
    with pytest.raises(DecodeError, match=f"no face found in any of the 4 frames of {NO_FACE}.mp4"):
        decode_video(NO_FACE, path, VideoDecodeConfig(num_frames=4, faces=True, require_face=True))


def test_require_face_cli_fails_only_the_faceless_clip(tmp_path) -> None:
    from tiny_models import build_hf_clip

    from mer.store import FeatureStore

    model = tmp_path / "hfclip"
    model.mkdir()
    build_hf_clip(model)
    names = ["fer_test", NO_FACE]
    rows = [{"name": n, "video": str((VIDEO / f"{n}.mp4").resolve())} for n in names]
    table = write_csv(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    res = subprocess.run([*mer_cli(), "extract", "video", str(table), "--store", str(store), "-e", "clip",
                          "-m", str(model), "--num-frames", "4", "--faces", "--face-size", "32", "--require-face",
                          "--set", "faces"], capture_output=True, text=True, timeout=HANG_S)
    assert res.returncode == 1, res.stdout + res.stderr
    fs = FeatureStore(store)["video/faces"]
    assert fs.names() == ["fer_test"]
    np.testing.assert_array_equal(fs.read_extra("faces", ["fer_test"]), [4])
    failures = fs.failures()
    assert list(failures) == [NO_FACE], failures
    assert failures[NO_FACE] == f"no face found in any of the 4 frames of {NO_FACE}.mp4 (mtcnn detector; --require-face)"
    assert NO_FACE in res.stdout
    out = " ".join(res.stdout.split())
    assert "faces: found in 4 of 4 sampled frames (100%) of 1 clips" in out, out
    dec = fs.provenance.decode["video"]
    assert dec["face_detector"] == "mtcnn" and dec["require_face"] is True and dec["face_margin"] == 0.2


def test_report_names_the_clips_without_any_face() -> None:
    import io

    from rich.console import Console

    from mer.pipeline.report import print_faces

    buf = io.StringIO()
    print_faces(Console(file=buf, width=300), {"a": (3, 4), "b": (0, 5), "c": (2, 2)})
    out = buf.getvalue()
    assert "faces: found in 5 of 11 sampled frames (45%) of 3 clips" in out
    assert "no face in any frame of 1 clips: b (centre squares were used; --require-face makes them failures)" in out
