"""hf-speech, hf-text and clip extractors on tiny random models of the real architectures.

Every model is built with random weights, saved to a tmp dir and loaded back through the extractor's
real loading code (``from_pretrained(dir)`` / open_clip checkpoint files). Nothing is downloaded.
Real inputs where cheap: a RAVDESS FLAC decoded with PyAV, MER2023 English subtitles.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mer.extractors import clip_image, hf_speech, hf_text  # noqa: E402,F401  (registers the extractors)
from mer.extractors.base import AudioClip, ItemError, TextClip, VideoClip, get_extractor  # noqa: E402
from conftest import assert_reduced_precision_close  # noqa: E402
from tiny_models import (  # noqa: E402
    SENTENCES,
    SR,
    build_bert,
    build_hf_clip,
    build_hubert,
    build_llama,
    build_open_clip,
    build_qwen,
    build_w2v,
    conv_frames,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RAVDESS_AUDIO = SHARED / "ravdess" / "audio"
MER_TRANSCRIPTS = Path(__file__).resolve().parents[1] / "examples" / "mer2023" / "transcription.csv"

ATOL = 1e-4


def make(name: str, model_dir: Path, **kw):
    """An extractor through the registry, as the pipeline builds it."""
    cls = get_extractor(name)
    return cls(cls.config_class(model=str(model_dir), **kw))


def close(a: np.ndarray, b: np.ndarray, atol: float = ATOL) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=atol, rtol=1e-4))


# ---- real inputs ------------------------------------------------------------------------------
def decode_audio(path: Path, rate: int = SR) -> np.ndarray:
    """Mono float32 samples at ``rate`` decoded with PyAV."""
    av = pytest.importorskip("av")
    out = []
    with av.open(str(path)) as f:
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in f.decode(audio=0):
            for r in res.resample(frame):
                out.append(r.to_ndarray().reshape(-1))
        for r in res.resample(None):
            out.append(r.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """1.5 s of real speech (RAVDESS) when the shared data is there, else a synthetic chirp + noise."""
    files = sorted(RAVDESS_AUDIO.glob("*.flac")) if RAVDESS_AUDIO.is_dir() else []
    if files:
        x = decode_audio(files[0])
        x = x[int(0.9 * SR): int(2.4 * SR)]  # the spoken part (RAVDESS takes start with ~1 s of silence)
        if len(x) >= int(1.3 * SR) and np.abs(x).max() > 0:
            return (0.5 * x / np.abs(x).max()).astype(np.float32)  # peak 0.5: keeps the 1e-7 variance floor negligible
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (150 + 200 * t) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def mer_subtitles(n: int) -> list[str]:
    if not MER_TRANSCRIPTS.is_file():
        pytest.skip("MER2023 transcription.csv not available")
    with open(MER_TRANSCRIPTS, newline="", encoding="utf-8") as f:
        rows = [r["english"].strip() for r in csv.DictReader(f)]
    return [r for r in rows if r][:n]


# ---- tiny speech models (builders in tiny_models.py) ------------------------------------------
@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory) -> Path:
    """HuBERT-base style: group-norm conv encoder, no attention mask."""
    return build_hubert(tmp_path_factory.mktemp("hubert"))


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory) -> Path:
    """wav2vec2-large style: layer-norm conv encoder + stable layer norm, takes an attention mask."""
    return build_w2v(tmp_path_factory.mktemp("w2v"))


@pytest.fixture(scope="module")
def hubert(hubert_dir):
    return make("hf-speech", hubert_dir, layers="last", window_s=0)


@pytest.fixture(scope="module")
def w2v(w2v_dir):
    return make("hf-speech", w2v_dir, layers="last2", window_s=0, batch_size=4)


def test_speech_shapes_times_and_dim(hubert_dir, speech):
    clip = AudioClip("ravdess", speech[: SR])
    ext = make("hf-speech", hubert_dir, layers="last2", window_s=0, level="frame")
    assert ext.dim == 32 and ext.decode_settings() == {"sample_rate": SR}
    (f,) = ext.extract([clip])
    T = conv_frames(SR)
    assert f.values.shape == (T, 32) and f.values.dtype == np.float32
    assert np.isfinite(f.values).all()
    assert f.times.shape == (T,)
    np.testing.assert_allclose(f.times[:3], [0.0, 20 / SR, 40 / SR])
    utt = make("hf-speech", hubert_dir, layers="last2", window_s=0).extract([clip])[0]
    assert utt.values.shape == (32,) and utt.times is None
    assert close(utt.values, f.values.mean(0))


@pytest.mark.parametrize("which", ["hubert", "w2v"])
def test_speech_batching_invariance(which, request, speech):
    ext = request.getfixturevalue(which)
    short = AudioClip("short", speech[: int(0.4 * SR)])
    others = [AudioClip("long", speech[: int(1.2 * SR)]), AudioClip("mid", speech[SR // 4: SR // 4 + int(0.7 * SR)])]
    alone = ext.extract([short])[0].values
    batch = ext.extract([others[0], short, others[1]])
    assert close(batch[1].values, alone)
    assert close(batch[0].values, ext.extract([others[0]])[0].values)
    if which == "w2v":  # the mask path really pads clips of different lengths together
        assert [len(b) for b in ext._batches([100, 400, 250])] == [3]
    else:  # group norm: only identical lengths share a pass
        assert [len(b) for b in ext._batches([100, 400, 100])] == [1, 2]


def test_speech_frame_batching_invariance_with_mask(w2v_dir, speech):
    ext = make("hf-speech", w2v_dir, layers="last", window_s=0, level="frame", batch_size=8)
    a, b = AudioClip("a", speech[:9000]), AudioClip("b", speech[:20000])
    fa = ext.extract([a])[0].values
    fb, fa_b = ext.extract([b, a])
    assert fa.shape == (conv_frames(9000), 32) and fb.values.shape == (conv_frames(20000), 32)
    assert close(fa_b.values, fa)


def test_speech_layer_selection_and_pooling(hubert_dir, speech):
    clip = [AudioClip("x", speech[: SR // 2])]
    def run(spec: str, pool: str = "mean") -> np.ndarray:
        return make("hf-speech", hubert_dir, layers=spec, layer_pool=pool, window_s=0).extract(clip)[0].values

    last, last2 = run("last"), run("last2")
    assert close(last, run("-1"))
    assert not close(last, last2, atol=1e-3)
    assert close(last2, run("-1,-2"))
    assert close(run("last2", "sum"), 2 * last2)  # sum == mean * n_layers
    with pytest.raises(ValueError):
        make("hf-speech", hubert_dir, layers="last9")
    with pytest.raises(ValueError):
        make("hf-speech", hubert_dir, layers="top")


def test_speech_windowing(hubert_dir, speech):
    x = speech[: int(1.3 * SR)]
    ext = make("hf-speech", hubert_dir, layers="last", window_s=0.5, level="frame")
    (f,) = ext.extract([AudioClip("long", x)])
    sizes = [8000, 8000, len(x) - 16000]
    assert f.values.shape == (sum(conv_frames(n) for n in sizes), 32)
    assert f.notes["windows"] == 3
    assert np.all(np.diff(f.times) > 0)
    second = conv_frames(8000)
    assert f.times[second] == pytest.approx(0.5)
    utt = make("hf-speech", hubert_dir, layers="last", window_s=0.5).extract([AudioClip("long", x)])[0].values
    assert np.isfinite(utt).all() and close(utt, f.values.mean(0))
    # the second window alone (normalised over the whole clip first) gives the same frames
    whole = make("hf-speech", hubert_dir, layers="last", window_s=0, level="frame", normalize=False)
    win = make("hf-speech", hubert_dir, layers="last", window_s=0.5, level="frame", normalize=False)
    part = whole.extract([AudioClip("w2", x[8000:16000])])[0].values
    assert close(win.extract([AudioClip("long", x)])[0].values[second: 2 * second], part)


def test_speech_short_empty_and_resampled(hubert, speech):
    with pytest.raises(ItemError, match="silent-one"):
        hubert.extract([AudioClip("ok", speech[:4000]), AudioClip("silent-one", np.zeros(0, np.float32))])
    (f,) = hubert.extract([AudioClip("tiny", speech[:10])])
    assert f.notes.get("padded") is True and f.values.shape == (32,) and np.isfinite(f.values).all()
    assert hubert.min_samples == 40 and conv_frames(40) == 1
    (g,) = hubert.extract([AudioClip("8k", speech[: SR // 2][::2].copy(), sample_rate=8000)])
    assert g.notes["resampled_from"] == 8000 and np.isfinite(g.values).all()


def test_speech_normalize_setting(hubert_dir, w2v_dir, speech):
    from transformers import Wav2Vec2FeatureExtractor

    x = speech[:6000]
    norm = make("hf-speech", hubert_dir, layers="last", window_s=0, normalize=True)
    raw = make("hf-speech", hubert_dir, layers="last", window_s=0, normalize=False)
    assert close(norm.extract([AudioClip("a", x)])[0].values, norm.extract([AudioClip("a", 0.5 * x)])[0].values)
    assert not close(raw.extract([AudioClip("a", x)])[0].values, raw.extract([AudioClip("a", 0.5 * x)])[0].values)
    # the model's saved feature-extractor config wins
    assert make("hf-speech", w2v_dir, layers="last", normalize=False).do_normalize is True
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=False).save_pretrained(hubert_dir)
    try:
        assert make("hf-speech", hubert_dir, layers="last", normalize=True).do_normalize is False
    finally:
        (hubert_dir / "preprocessor_config.json").unlink()


# ---- tiny text models (builders in tiny_models.py) --------------------------------------------
@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return build_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_qwen(tmp_path_factory.mktemp("qwen2"))


def test_text_bert_shapes_and_batching(bert_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_dir)
    clips = [TextClip(f"s{i}", s) for i, s in enumerate(SENTENCES)]
    utt = make("hf-text", bert_dir, batch_size=3)
    frame = make("hf-text", bert_dir, level="frame", batch_size=3)
    assert utt.dim == 32
    u = utt.extract(clips)
    fr = frame.extract(clips)
    for c, a, b in zip(clips, u, fr):
        T = len(tok(c.text)["input_ids"])
        assert a.values.shape == (32,) and np.isfinite(a.values).all()
        assert b.values.shape == (T, 32) and b.times is None
        assert close(a.values, b.values.mean(0))
    # "yes ." alone vs padded inside a batch of longer subtitles
    alone = utt.extract([clips[4]])[0].values
    assert close(u[4].values, alone)
    assert close(fr[4].values, frame.extract([clips[4]])[0].values)


def test_text_layers_pooling_empty_truncation(bert_dir):
    clips = [TextClip("a", SENTENCES[0]), TextClip("b", SENTENCES[1])]
    last = make("hf-text", bert_dir).extract(clips)
    last2 = make("hf-text", bert_dir, layers="last2").extract(clips)
    last2_sum = make("hf-text", bert_dir, layers="last2", layer_pool="sum").extract(clips)
    assert not close(last[0].values, last2[0].values, atol=1e-3)
    assert close(last2_sum[0].values, 2 * last2[0].values)
    ext = make("hf-text", bert_dir)
    with pytest.raises(ItemError, match="blank-sub") as e:
        ext.extract([clips[0], TextClip("blank-sub", "  \n ")])
    assert "empty subtitle" in str(e.value)
    longer = " ".join(SENTENCES)
    tr = make("hf-text", bert_dir, max_tokens=8, level="frame")
    full = len(tr.tokenizer(longer)["input_ids"])
    (f,) = tr.extract([TextClip("long", longer)])
    assert f.values.shape == (8, 32) and f.notes["truncated_tokens"] == full - 8
    assert "truncated_tokens" not in tr.extract([TextClip("short", "yes .")])[0].notes


@pytest.mark.parametrize("which", ["llama_dir", "qwen_dir"])
def test_text_causal_lm_last_token(which, request):
    d = request.getfixturevalue(which)
    ext = make("hf-text", d, pooling="last", batch_size=4)
    assert ext.tokenizer.pad_token is not None and ext.dim == 32
    assert type(ext.model).__name__.endswith("Model")  # base model, no LM head
    clips = [TextClip(f"s{i}", s) for i, s in enumerate(SENTENCES)]
    vals = ext.extract(clips)
    for c, v in zip(clips, vals):
        assert v.values.shape == (32,) and np.isfinite(v.values).all()
        assert close(v.values, ext.extract([c])[0].values)
    frames = make("hf-text", d, level="frame").extract(clips[:2])
    n0 = len(ext.tokenizer(clips[0].text)["input_ids"])
    assert frames[0].values.shape == (n0, 32)
    assert close(vals[0].values, frames[0].values[-1])  # "last" = the last real token's vector


def test_text_real_mer_subtitles(bert_dir):
    subs = mer_subtitles(12)
    clips = [TextClip(f"mer{i}", s) for i, s in enumerate(subs)]
    batched = make("hf-text", bert_dir, batch_size=5).extract(clips)
    single = make("hf-text", bert_dir, batch_size=1).extract(clips)
    assert len(batched) == len(clips)
    for a, b in zip(batched, single):
        assert a.values.shape == (32,) and close(a.values, b.values)


# ---- CLIP -------------------------------------------------------------------------------------
def _frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, h, w, 3))
    return np.clip(base + rng.integers(-20, 20, size=(n, h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    return build_hf_clip(tmp_path_factory.mktemp("hfclip"))


def test_clip_hf_shapes_batching_and_errors(hf_clip_dir):
    a = VideoClip("a", _frames(5, seed=1), np.arange(5) * 0.25)
    b = VideoClip("b", _frames(20, seed=2), np.arange(20) * 0.1)
    ext = make("clip", hf_clip_dir, level="frame", batch_size=1)  # 16 frames per pass: b spans two
    assert ext.backend == "hf" and ext.dim == 24
    fa, fb = ext.extract([a, b])
    assert fa.values.shape == (5, 24) and fb.values.shape == (20, 24)
    np.testing.assert_array_equal(fb.times, b.times)
    assert np.isfinite(fb.values).all()
    big = make("clip", hf_clip_dir, level="frame", batch_size=8)
    assert close(big.extract([b])[0].values, fb.values)
    assert close(big.extract([a])[0].values, fa.values)
    utt = make("clip", hf_clip_dir)
    ua, ub = utt.extract([a, b])
    assert ua.values.shape == (24,) and close(ua.values, fa.values.mean(0)) and close(ub.values, fb.values.mean(0))
    bigger = make("clip", hf_clip_dir, level="frame", image_size=48)  # position embeddings interpolated
    assert bigger.preprocess(a.frames).shape == (5, 3, 48, 48)
    assert bigger.extract([a])[0].values.shape == (5, 24)
    assert close(make("clip", hf_clip_dir, level="frame").preprocess(b.frames, chunk=3).numpy(),
                 ext.preprocess(b.frames).numpy())
    with pytest.raises(ItemError, match="nothing"):
        utt.extract([a, VideoClip("nothing", np.zeros((0, 40, 56, 3), np.uint8), np.zeros(0))])


def test_clip_hf_preprocessing_matches_processor(hf_clip_dir, tmp_path):
    """Our torch preprocessing vs CLIPImageProcessor, and embeddings vs CLIPModel directly."""
    import shutil

    from transformers import CLIPImageProcessor, CLIPModel

    d = tmp_path / "withproc"
    shutil.copytree(hf_clip_dir, d)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc.save_pretrained(d)
    ext = make("clip", d, level="frame")
    frames = _frames(2, h=32, w=48, seed=3)  # no resize needed for the short side: exact up to crop
    ours = ext.preprocess(frames)
    ref = proc(images=list(frames), return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (2, 3, 32, 32)
    assert torch.allclose(ours, ref, atol=1e-4)
    resized = _frames(1, h=64, w=80, seed=4)  # resize path: interpolation differs slightly from PIL
    assert (ext.preprocess(resized) - proc(images=list(resized), return_tensors="pt")["pixel_values"]).abs().mean() < 0.1
    model = CLIPModel.from_pretrained(d).eval()
    with torch.no_grad():
        direct = model.get_image_features(pixel_values=ref)
    direct = direct if isinstance(direct, torch.Tensor) else direct.pooler_output
    got = ext.extract([VideoClip("v", frames, np.array([0.0, 0.04]))])[0].values
    assert close(got, direct.numpy())


@pytest.fixture(scope="module")
def open_clip_tiny(tmp_path_factory):
    """A tiny open_clip architecture registered from a json config, and a weights file."""
    pytest.importorskip("open_clip")
    return build_open_clip(tmp_path_factory.mktemp("openclip"))


def test_clip_open_clip(open_clip_tiny):
    model, weights, local = open_clip_tiny
    ext = make("clip", "mer-tiny-vit", pretrained=str(weights), level="frame", batch_size=2)
    assert ext.backend == "open_clip" and ext.dim == 16 and ext.weights_path() == weights
    clip = VideoClip("v", _frames(3, seed=5), np.array([0.0, 0.5, 1.0]))
    (f,) = ext.extract([clip])
    assert f.values.shape == (3, 16) and np.isfinite(f.values).all()
    with torch.no_grad():
        direct = model.encode_image(ext.preprocess(clip.frames)).numpy()
    assert close(f.values, direct)  # the weights file was loaded, not a fresh random init
    from_dir = make("clip", local)  # a local open_clip folder (open_clip_config.json + weights)
    assert from_dir.backend == "open_clip"
    assert close(from_dir.extract([clip])[0].values, direct.mean(0))


# ---- reduced precision / GPU ------------------------------------------------------------------
CUDA = bool(torch.cuda.is_available())


@pytest.mark.parametrize("device,dtype", [
    ("cpu", "bfloat16"),
    pytest.param("cuda", "float16", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
    pytest.param("cuda", "bfloat16", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device")),
])
def test_reduced_precision_matches_float32(device, dtype, hubert_dir, w2v_dir, bert_dir, llama_dir, hf_clip_dir, speech):
    """Half types (and the GPU when there is one) give float32 outputs close to the CPU float32 ones."""
    cases = [
        ("hf-speech", hubert_dir, dict(layers="last2", window_s=0.5),
         [AudioClip("a", speech[: int(1.2 * SR)]), AudioClip("b", speech[:5000])]),
        ("hf-speech", w2v_dir, dict(layers="last", window_s=0),
         [AudioClip("a", speech[: int(1.2 * SR)]), AudioClip("b", speech[:5000])]),
        ("hf-text", bert_dir, dict(), [TextClip("a", SENTENCES[0]), TextClip("b", SENTENCES[5])]),
        ("hf-text", llama_dir, dict(pooling="last"), [TextClip("a", SENTENCES[0]), TextClip("b", SENTENCES[5])]),
        ("clip", hf_clip_dir, dict(), [VideoClip("a", _frames(6), np.arange(6) / 25)]),
    ]
    for name, d, kw, items in cases:
        ref = make(name, d, **kw).extract(items)
        got = make(name, d, device=device, dtype=dtype, **kw).extract(items)
        for r, g in zip(ref, got):
            assert g.values.dtype == np.float32 and np.isfinite(g.values).all()
            assert_reduced_precision_close(r.values, g.values, dtype, (name, d.name, r.values.shape))

