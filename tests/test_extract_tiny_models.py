"""`mer extract` through the real console script with the Hugging Face / open_clip extractors.

The models are tiny random ones of the real architectures (HuBERT, BERT, Llama, CLIPModel,
open_clip ViT) saved to a tmp dir once per module (builders in ``tiny_models.py``); the CLI loads
them by path, as it would a downloaded checkpoint. Inputs: bundled RAVDESS FLACs, synthetic mp4s
(``media.write_av``), subtitles. Vectors written by the CLI are compared with the extractor run
in this process on the same decoded inputs, so a wrong column, level, option or decode setting
shows up as wrong numbers, not just a wrong exit code. Independent runs go two at a time.
The last two tests check how ``-O`` values reach the config in process (typer's CliRunner with
``run_stage`` replaced by a spy): no model is needed for that.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import HANG_S, SAMPLE, SHARED, assert_reduced_precision_close, mer_cli  # noqa: E402
from conftest import write_csv as write_table  # noqa: E402
from media import write_av  # noqa: E402
from mer.extractors import extractor_names, get_extractor  # noqa: E402
from mer.store import FeatureStore  # noqa: E402
from tiny_models import (  # noqa: E402
    CLIP_PROJECTION,
    CONV_STRIDE,
    HIDDEN,
    OPEN_CLIP_EMBED,
    SENTENCES,
    SR,
    build_bert,
    build_hf_clip,
    build_hubert,
    build_llama,
    build_open_clip,
    conv_frames,
)

F16 = dict(atol=2e-3, rtol=2e-3)  # stored float16 vs float32 computed here
HOP_S = int(np.prod(CONV_STRIDE)) / SR  # 20 samples = 1.25 ms per frame of the tiny speech encoders


def mer(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}  # keep typer's error panel from wrapping the option lists
    return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, timeout=HANG_S, env=env)


def mer_all(*commands: tuple[object, ...]) -> list[subprocess.CompletedProcess[str]]:
    """Independent ``mer`` runs, two at a time (most of each run is importing torch/transformers)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: mer(*args), commands))


def flat(res: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr with rich's box drawing and line breaks collapsed to single spaces."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", res.stdout + " " + res.stderr)


def ok(res: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert res.returncode == code, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"


def direct(extractor: str, model: Path, items: list, **kw) -> list[np.ndarray]:
    """The extractor run in this process on already decoded items: the reference vectors."""
    cls = get_extractor(extractor)
    ext = cls(cls.config_class(model=str(model), **kw))
    return [f.values for f in ext.extract(items)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """One folder per tiny model; the folder name is what the default set key uses."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, build in [("hubert", build_hubert), ("bert", build_bert), ("llama", build_llama),
                        ("hfclip", build_hf_clip)]:
        (root / name).mkdir()
        out[name] = build(root / name)
    (root / "openclip").mkdir()
    _, _, out["openclip"] = build_open_clip(root / "openclip")  # the self-contained local folder
    return out


# ---- audio ------------------------------------------------------------------------------------
def test_audio_hf_speech_utt_and_frames(tmp_path, models):
    from mer.pipeline.decode_audio import decode_audio

    flacs = sorted((SAMPLE / "audio").glob("*.flac"))[:4]
    write_av(tmp_path / "tone.mp4", audio=True, video=True)
    rows = [{"name": p.stem, "audio": str(p.resolve()), "video": ""} for p in flacs]
    rows.append({"name": "tone", "audio": "", "video": "tone.mp4"})  # audio from the video's track
    table = write_table(tmp_path / "clips.csv", rows)
    names = [r["name"] for r in rows]
    hubert = models["hubert"]
    utt_store, frame_store = tmp_path / "utt.zarr", tmp_path / "frame.zarr"

    pooled = ("-O", "layers=last2", "-O", "layer_pool=sum")  # the tiny encoder has 2 layers (default: last4)
    for res in mer_all(
        ("extract", "audio", table, "--store", utt_store, "-e", "hf-speech", "-m", hubert, *pooled,
         "--batch-size", "2"),
        ("extract", "audio", table, "--store", frame_store, "-e", "hf-speech", "-m", hubert, *pooled,
         "--level", "frame", "--set", "hubert-frames"),
    ):
        ok(res)
    decoded = [decode_audio(n, p) for n, p in zip(names, [*flacs, tmp_path / "tone.mp4"])]
    ref = direct("hf-speech", hubert, decoded, layers="last2", layer_pool="sum", level="frame")

    fr = FeatureStore(frame_store)["audio/hubert-frames"]
    assert fr.level == "frame" and fr.dim == HIDDEN and sorted(fr.names()) == sorted(names)
    cfg = fr.provenance.config
    assert cfg["layers"] == "last2" and cfg["layer_pool"] == "sum" and cfg["level"] == "frame"
    assert fr.provenance.decode == {"audio": {"sample_rate": SR, "max_seconds": None}, "sample_rate": SR}
    frames, times = fr.read(names, dtype="float32"), fr.read_times(names)
    for clip, v, t, r in zip(decoded, frames, times, ref):
        T = conv_frames(len(clip.samples))  # the conv length formula for the decoded sample count
        assert v.shape == (T, HIDDEN) and np.isfinite(v).all(), clip.name
        np.testing.assert_allclose(t, np.arange(T) * HOP_S, atol=1e-5)  # frame k at k * conv stride / 16 kHz
        np.testing.assert_allclose(v, r, atol=2e-3 * max(1.0, float(np.abs(r).max())), rtol=2e-3)
    assert abs(len(decoded[-1].samples) / SR - 3.0) < 0.05  # the 3 s tone, 44.1 kHz AAC -> 16 kHz

    fs = FeatureStore(utt_store)["audio/hf-speech-hubert-utt"]
    assert fs.level == "utt" and fs.dim == HIDDEN and sorted(fs.names()) == sorted(names)
    x = fs.read(names, dtype="float32")
    assert x.shape == (5, HIDDEN) and np.isfinite(x).all() and x.std() > 0.01
    np.testing.assert_allclose(x, np.stack([r.mean(0) for r in ref]), **F16)  # utterance = mean over the frames
    assert fs.provenance.weights_hash.startswith("sha256:") and fs.provenance.config["level"] == "utt"


# ---- text -------------------------------------------------------------------------------------
def _english_rows() -> list[dict[str, str]]:
    """Real MER2023 english/chinese subtitles when the shared data has them, else made-up ones."""
    path = SHARED / "mer2023" / "transcription.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("english", "").strip() and r.get("chinese", "").strip()]
        return [{"name": r["name"], "english": r["english"].strip(), "chinese": r["chinese"].strip()} for r in rows[:4]]
    zh = ["见到你我真高兴。", "你为什么这么生气？", "哦不，这真的很糟糕！", "我们得走了。"]
    return [{"name": f"mer{i}", "english": e, "chinese": c} for i, (e, c) in enumerate(zip(SENTENCES, zh))]


def test_text_hf_text_empty_subtitle_llama_column_frames_bf16(tmp_path, models):
    from mer.extractors.base import TextClip
    from transformers import AutoTokenizer

    subs = list(SENTENCES[:5])
    subs.insert(2, "")  # the empty subtitle in the middle of a batch
    rows = [{"name": f"s{i}", "text": t} for i, t in enumerate(subs)]
    table = write_table(tmp_path / "subs.csv", rows)
    good = [TextClip(r["name"], r["text"]) for r in rows if r["text"]]
    eng_rows = _english_rows()  # a table with english and chinese columns (no text column)
    eng = write_table(tmp_path / "eng.csv", eng_rows)
    eng_names = [r["name"] for r in eng_rows]
    bert, llama = models["bert"], models["llama"]
    st = {k: tmp_path / f"{k}.zarr" for k in ("bert", "llama", "frame", "bf16")}

    res_bert, res_llama, res_frame, res_bf16 = mer_all(
        ("extract", "text", table, "--store", st["bert"], "-e", "hf-text", "-m", bert, "--batch-size", "2"),
        ("extract", "text", table, "--store", st["llama"], "-e", "hf-text", "-m", llama, "-O", "pooling=last"),
        ("extract", "text", eng, "--store", st["frame"], "-e", "hf-text", "-m", bert,
         "--text-column", "english", "--level", "frame"),
        ("extract", "text", eng, "--store", st["bf16"], "-e", "hf-text", "-m", bert,
         "--text-column", "english", "--dtype", "bfloat16", "--set", "english-bf16"),
    )

    # an empty subtitle: recorded as failed, the other five done, exit code 1
    ok(res_bert, 1)
    assert "s2: empty subtitle" in flat(res_bert)
    fs = FeatureStore(st["bert"])["text/hf-text-bert-utt"]
    assert fs.failures().keys() == {"s2"} and "empty subtitle" in fs.failures()["s2"]
    assert fs.dim == HIDDEN and sorted(fs.names()) == sorted(c.name for c in good)
    np.testing.assert_allclose(fs.read([c.name for c in good], dtype="float32"),
                               np.stack(direct("hf-text", bert, good)), **F16)
    assert fs.provenance.decode == {"text_column": "text"}

    # a causal LM (no pad token) with the last token's vector
    ok(res_llama, 1)
    fs = FeatureStore(st["llama"])["text/hf-text-llama-utt"]
    assert fs.failures().keys() == {"s2"} and fs.dim == HIDDEN and len(fs.names()) == 5
    assert fs.provenance.config["pooling"] == "last"
    got = fs.read([c.name for c in good], dtype="float32")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np.stack(direct("hf-text", llama, good, pooling="last")), **F16)

    # --text-column english, frame level: [T, D] with T = tokens (special ones included)
    ok(res_frame)
    fr = FeatureStore(st["frame"])["text/hf-text-bert-frame"]
    assert fr.level == "frame" and fr.dim == HIDDEN and sorted(fr.names()) == sorted(eng_names)
    assert fr.provenance.decode == {"text_column": "english"}
    tok = AutoTokenizer.from_pretrained(bert)
    english = np.stack(direct("hf-text", bert, [TextClip(r["name"], r["english"]) for r in eng_rows]))
    chinese = np.stack(direct("hf-text", bert, [TextClip(r["name"], r["chinese"]) for r in eng_rows]))
    for r, v, e, c in zip(eng_rows, fr.read(eng_names, dtype="float32"), english, chinese):
        assert v.shape == (len(tok(r["english"])["input_ids"]), HIDDEN) and np.isfinite(v).all()
        np.testing.assert_allclose(v.mean(0), e, **F16)  # token mean = the utterance vector of the english text
        assert not np.allclose(v.mean(0), c, atol=1e-2)  # (the chinese column would give another)

    # bfloat16 compute on the CPU: close to float32
    ok(res_bf16)
    fs = FeatureStore(st["bf16"])["text/english-bf16"]
    assert fs.provenance.config["dtype"] == "bfloat16" and fs.provenance.decode == {"text_column": "english"}
    half = fs.read(eng_names, dtype="float32")
    assert np.isfinite(half).all() and not np.allclose(half, english, atol=1e-4)  # really computed in bf16
    assert_reduced_precision_close(english, half, "bfloat16", "hf-text bert bf16")


# ---- video ------------------------------------------------------------------------------------
def test_video_clip_hf_frames_and_open_clip_faces(tmp_path, models):
    from mer.pipeline.decode_video import VideoDecodeConfig, decode_video

    for i in range(3):
        write_av(tmp_path / f"v{i}.mp4", audio=False)
    names = [f"v{i}" for i in range(3)]
    table = write_table(tmp_path / "clips.csv", [{"name": n, "video": f"{n}.mp4"} for n in names])
    hfclip, local = models["hfclip"], models["openclip"]
    st = {k: tmp_path / f"{k}.zarr" for k in ("utt", "frames", "openclip")}
    runs = [
        ("extract", "video", table, "--store", st["utt"], "-e", "clip", "-m", hfclip, "--fps", "2"),
        ("extract", "video", table, "--store", st["frames"], "-e", "clip", "-m", hfclip,
         "--level", "frame", "--num-frames", "4", "--set", "clipframes"),
        # open_clip from a local folder (open_clip_config.json + weights), on face crops
        ("extract", "video", table, "--store", st["openclip"], "-e", "clip", "-m", local, "-O", "backend=open_clip",
         "--faces", "--face-size", "32", "--set", "openclip-faces"),
    ]
    for res in mer_all(*runs):
        ok(res)

    # utterance level at 2 fps: projection_dim, three identical clips -> three identical vectors
    fs = FeatureStore(st["utt"])["video/clip-hfclip-utt"]
    assert fs.dim == CLIP_PROJECTION and sorted(fs.names()) == names
    utt = fs.read(names, dtype="float32")
    assert np.isfinite(utt).all() and utt.std() > 1e-3
    np.testing.assert_allclose(utt, np.stack([utt[0]] * 3), **F16)
    np.testing.assert_array_equal(fs.read_extra("frames", names), [6, 6, 6])  # 3 s at 2 fps
    ref = direct("clip", hfclip, [decode_video("v0", tmp_path / "v0.mp4", VideoDecodeConfig(fps=2))])
    np.testing.assert_allclose(utt[0], ref[0], **F16)
    assert fs.provenance.decode["video"]["fps"] == 2

    # frame level, 4 evenly spaced frames per clip
    fr = FeatureStore(st["frames"])["video/clipframes"]
    assert fr.level == "frame" and fr.dim == CLIP_PROJECTION and sorted(fr.names()) == names
    assert fr.provenance.decode["video"]["num_frames"] == 4 and fr.provenance.decode["video"]["fps"] is None
    for v, t in zip(fr.read(names, dtype="float32"), fr.read_times(names)):
        assert v.shape == (4, CLIP_PROJECTION) and np.isfinite(v).all()
        assert np.all(np.diff(t) > 0) and 0 <= t[0] and t[-1] <= 3.0
        centres = (np.arange(4) + 0.5) * 3.0 / 4  # of 4 equal segments of the 3 s clip
        assert np.all(t <= centres + 1e-3) and np.all(centres - t < 1 / 25 + 1e-3)  # the 25 fps frame showing there

    # open_clip on --faces crops: no face in the synthetic frames -> centre crops, per-clip faces == 0
    oc = FeatureStore(st["openclip"])["video/openclip-faces"]
    assert oc.dim == OPEN_CLIP_EMBED and sorted(oc.names()) == names
    assert oc.provenance.config["backend"] == "open_clip" and oc.provenance.decode["video"]["faces"] is True
    np.testing.assert_array_equal(oc.read_extra("faces", names), [0, 0, 0])
    np.testing.assert_array_equal(oc.read_extra("frames", names), [6, 6, 6])
    v = oc.read(names, dtype="float32")
    assert np.isfinite(v).all() and v.std() > 1e-3
    crops = decode_video("v0", tmp_path / "v0.mp4", VideoDecodeConfig(fps=2, faces=True, face_size=32))
    assert crops.faces == 0 and crops.frames.shape == (6, 32, 32, 3)
    np.testing.assert_allclose(v[0], direct("clip", local, [crops], backend="open_clip")[0], **F16)


# ---- refused options --------------------------------------------------------------------------
def test_unknown_option_and_wrong_modality_extractor(tmp_path):
    table = write_table(tmp_path / "t.csv", [{"name": "a", "text": "yes ."}])
    store = tmp_path / "e.zarr"
    res, wrong = mer_all(
        ("extract", "text", table, "--store", store, "-e", "hf-text", "-m", "nowhere", "-O", "nonsense=1"),
        ("extract", "text", table, "--store", store, "-e", "whisper-ct2"),
    )
    assert res.returncode != 0
    msg = flat(res)
    assert "nonsense=1" in msg
    listed = re.search(r"key in ([\w, ]+)", msg)
    assert listed, msg
    offered = set(re.findall(r"\w+", listed.group(1)))
    assert {"layers", "layer_pool", "max_tokens", "pooling", "trust_remote_code"} <= offered
    assert not offered & {"model", "level", "device", "dtype", "batch_size"}  # those have their own flags

    assert wrong.returncode != 0
    msg = flat(wrong)
    assert "'whisper-ct2' is not one of" in msg
    text_extractors = extractor_names("text")
    assert "hf-text" in text_extractors and "whisper-ct2" not in text_extractors
    assert ", ".join(text_extractors) in msg
    assert not store.exists() or FeatureStore(store).sets() == []


# ---- how -O values reach the extractor config (in process: the stage is replaced by a spy) -----
def stage_spec(monkeypatch, tmp_path, *args: object):
    """The StageSpec that ``mer extract <args>`` hands to run_stage (nothing is loaded or run)."""
    from typer.testing import CliRunner

    from mer.pipeline import stage
    from mer.pipeline.cli_extract import app

    specs = []

    def spy(spec, **kw):
        specs.append(spec)
        return stage.StageReport(key=spec.set_key(spec.build_config()))

    monkeypatch.setattr(stage, "run_stage", spy)
    res = CliRunner().invoke(app, [*map(str, args), "--store", str(tmp_path / "s.zarr")])
    return res, (specs[0] if specs else None)


def test_option_optional_int_is_parsed_as_int(monkeypatch, tmp_path):
    """``ClipConfig.image_size: int | None = None``: ``-O image_size=48`` must give 48 as the Python API
    does. As the string "48" it is recorded so in provenance (a CLI-made set then differs from the same
    set made through StageSpec / dask), and ``-O image_size=0`` would be a truthy "0"."""
    table = write_table(tmp_path / "v.csv", [{"name": "v", "video": "v.mp4"}])
    res, spec = stage_spec(monkeypatch, tmp_path, "video", table, "-e", "clip", "-m", "m", "-O", "image_size=48")
    assert res.exit_code == 0, res.output
    assert spec.config["image_size"] == 48 and spec.build_config().identity()["image_size"] == 48


def test_option_level_is_not_silently_overridden(monkeypatch, tmp_path):
    """``-O`` lists (and accepts) level, device, dtype and model; ``-O level=frame`` must then give a frame
    set or be refused, not be silently replaced by ``--level``'s default ``utt`` (same for dtype)."""
    table = write_table(tmp_path / "t.csv", [{"name": "a", "text": "yes ."}])
    ignored = {}
    for key, value in [("level", "frame"), ("dtype", "bfloat16")]:
        res, spec = stage_spec(monkeypatch, tmp_path, "text", table, "-e", "hf-text", "-m", "m", "-O", f"{key}={value}")
        if res.exit_code == 0 and spec.config[key] != value:
            ignored[f"-O {key}={value}"] = spec.config[key]
    assert ignored == {}, f"silently replaced: {ignored}"
