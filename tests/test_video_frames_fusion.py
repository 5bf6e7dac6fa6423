"""Frame-level video into fusion, through the real console script end to end.

``mer extract video --level frame`` (a tiny random CLIP, tiny_models.py) on the bundled real clip
(examples/video/fer_test.mp4) and a synthetic one (media.write_av), ``mer extract audio --level
frame`` (a tiny random HuBERT) on real RAVDESS FLACs, then ``mer fuse train --model agt`` on both
frame-level sets and ``mer fuse predict``. Checks that the AGT is given the video as frames, one
token per decoded frame at its stored time (not a pooled vector), and that the run records the set
as frame level. The labels are arbitrary: this is about the plumbing, not accuracy (about 40 s on
one core, most of it starting the four `mer` processes).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from conftest import HANG_S, ROOT, SAMPLE, mer_cli, one_thread_env, write_csv  # noqa: E402
from media import write_av  # noqa: E402
from mer.fusion.data import Standardizer, load_features, make_batch  # noqa: E402
from mer.store import FeatureStore  # noqa: E402
from tiny_models import CLIP_PROJECTION, HIDDEN, build_hf_clip, build_hubert  # noqa: E402

FER = ROOT / "examples" / "video" / "fer_test.mp4"  # real, 4.6 s: 10 frames at 2 fps
V, A = "video/clip-frames", "audio/hubert-frames"
N = 8  # clips: the real and the synthetic video alternate, each with its own RAVDESS FLAC


def mer(*args: object) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, timeout=HANG_S,
                         env=one_thread_env(COLUMNS="200"))
    assert res.returncode == 0, f"mer {' '.join(map(str, args[:3]))}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The folder after both extractions, ``mer fuse train --model agt`` and ``mer fuse predict``."""
    root = tmp_path_factory.mktemp("vfuse")
    for name, build in (("clip", build_hf_clip), ("hubert", build_hubert)):
        (root / name).mkdir()
        build(root / name)
    write_av(root / "synthetic.mp4", audio=False)  # 3 s, 25 fps: 6 frames at 2 fps
    flacs = sorted((SAMPLE / "audio").glob("*.flac"))[:N]
    rows = [{"name": f"c{i}", "video": str(FER) if i % 2 == 0 else "synthetic.mp4", "audio": str(f.resolve())}
            for i, f in enumerate(flacs)]
    clips = write_csv(root / "clips.csv", rows)
    write_csv(root / "labels.csv", [{"name": r["name"], "discrete": ("neg", "pos")[i // 2 % 2]}
                                    for i, r in enumerate(rows)])
    store = root / "s.zarr"
    mer("extract", "video", clips, "--store", store, "-e", "clip", "-m", root / "clip", "--level", "frame",
        "--fps", "2", "--set", V.split("/")[1])
    mer("extract", "audio", clips, "--store", store, "-e", "hf-speech", "-m", root / "hubert", "--level", "frame",
        "-O", "layers=last2", "--set", A.split("/")[1])
    mer("fuse", "train", "--store", store, "--features", f"{A},{V}", "--labels", root / "labels.csv",
        "--out", root / "run", "--model", "agt", "--folds", "2", "-T", "epochs=3", "-T", "select=last",
        "-T", "max_frames=64", "-O", "width=16", "-O", "heads=2")
    mer("fuse", "predict", "--run", root / "run", "--store", store, "--out", root / "pred.csv")
    return root


def test_stored_video_frames_have_increasing_times(run: Path) -> None:
    store = FeatureStore(run / "s.zarr", mode="r")
    fs = store[V]
    names = [f"c{i}" for i in range(N)]
    assert fs.level == "frame" and fs.dim == CLIP_PROJECTION and sorted(fs.names()) == names
    for i, (x, t) in enumerate(zip(fs.read(names, dtype="float32"), fs.read_times(names))):
        assert x.shape == ((10 if i % 2 == 0 else 6), CLIP_PROJECTION) and np.isfinite(x).all()
        assert t.shape == (len(x),) and t[0] >= 0 and np.all(np.diff(t) > 0.4), t  # 2 frames/s, by timestamp
    audio = store[A]
    assert audio.level == "frame" and audio.dim == HIDDEN
    assert min(len(t) for t in audio.read_times(names)) > 1000  # 1.25 ms frames of ~3.5 s of speech


def test_agt_run_is_given_frame_level_video(run: Path) -> None:
    config = json.loads((run / "run" / "config.json").read_text())
    assert config["model"] == "agt" and config["features"] == [A, V]
    assert config["sets"][V]["level"] == "frame" and config["sets"][A]["level"] == "frame"
    assert config["model_config"]["time_encoding"] == "sine"  # frame tokens are placed by their times
    metrics = json.loads((run / "run" / "metrics.json").read_text())
    assert metrics["oof"]["n"] == N and len(metrics["folds"]) == 2

    # what training feeds the model: the run's loader and batcher, with its max_frames
    store = FeatureStore(run / "s.zarr", mode="r")
    names = [f"c{i}" for i in range(N)]
    data = load_features(store, [A, V], names, config["train"]["max_frames"])
    assert not data.utt[V] and not data.utt[A]
    stored = store[V].read_times(data.names)
    rows = np.arange(len(data))
    inputs, present = make_batch(data, rows, Standardizer.fit(data, rows))
    x, mask = inputs[V]
    assert tuple(x.shape) == (N, 10, CLIP_PROJECTION) and bool(present[V].all())
    for j, t in enumerate(stored):  # one token per stored frame, at its stored time; padding masked
        assert int(mask[j].sum()) == len(t) > 1
        np.testing.assert_allclose(inputs[V].times[j, :len(t)].numpy(), t, atol=1e-6)
    assert inputs[A][0].shape[1] == config["train"]["max_frames"]  # audio subsampled to max_frames


def test_predict_on_frame_level_sets(run: Path) -> None:
    lines = (run / "pred.csv").read_text().splitlines()
    assert lines[0] == "name,discrete" and len(lines) == N + 1
    assert {ln.split(",")[1] for ln in lines[1:]} <= {"neg", "pos"}
