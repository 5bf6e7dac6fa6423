"""The AGT that knows time (fusion/README.md, "Time"): frame times travel from the store through
``load_features``/``make_batch`` (subsampled with their frames), frame tokens get sine or learned
time encodings, ``align_window`` keeps audio queries to the frames near them, the null query is
left out of the pooled streams, old runs keep their behaviour, and on a task that only time can
solve (is the video event at the moment of the audio event?) the time-aware AGT learns what the
time-blind one cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_torch_thread
from mer.fusion.config import LEGACY_DEFAULTS, AGTConfig, config_from_dict, upgrade_model_config
from mer.fusion.data import Standardizer, load_features, make_batch
from mer.fusion.models import build_model
from mer.fusion.models.agt import AudioGuidedTransformer
from mer.fusion.models.common import SetBatch, times_of
from mer.fusion.predict import load_run
from mer.store import FeatureStore, Provenance

A, V, T = "audio/frames", "video/clip-frames", "text/utt"
DIMS = {A: 8, V: 16, T: 6}
UTT = {A: False, V: False, T: True}
TINY = dict(width=32, heads=2, dropout=0.0, modality_dropout=0.0)
# Held-out accuracy on 48 clips after 15 epochs (measured with seeds 0-4, 2 cores, torch 2.14):
# sine + 0.3 s window 0.81 0.96 0.85 0.94 0.77 (mean 0.87); learned + window mean 0.84; window
# without encoding mean 0.83; time_encoding="none" 0.48 0.60 0.60 0.50 0.48 (mean 0.53, chance
# 0.5); sine without the window 0.55 (it does not learn the relative timing from 144 clips). The
# test runs seeds 0 and 1; the bounds leave 0.07-0.1 to the worst seed measured.
AWARE_FLOOR, BLIND_CEILING, MARGIN = 0.70, 0.70, 0.20


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def agt(seed: int = 0, **kw) -> AudioGuidedTransformer:
    torch.manual_seed(seed)
    return build_model("agt", {**TINY, **kw}, DIMS, UTT, 3).eval()


def batch(b: int = 3, seed: int = 1) -> tuple[dict, dict]:
    """Audio at 10 fps over 0-1.9 s (20 frames), video at 2 fps (0.25, 0.75, ...; 6 frames, the last
    two of the first clip padding), one utterance-level text vector; every set present."""
    g = torch.Generator().manual_seed(seed)
    ta = (torch.arange(20) / 10.0).expand(b, 20).clone()
    tv = (torch.arange(6) * 0.5 + 0.25).expand(b, 6).clone()
    mv = torch.ones(b, 6, dtype=torch.bool)
    mv[0, 4:] = False
    tv[0, 4:] = float("nan")
    inputs = {A: SetBatch(torch.randn(b, 20, 8, generator=g), torch.ones(b, 20, dtype=torch.bool), ta),
              V: SetBatch(torch.randn(b, 6, 16, generator=g), mv, tv),
              T: SetBatch(torch.randn(b, 1, 6, generator=g), torch.ones(b, 1, dtype=torch.bool), None)}
    return inputs, {k: torch.ones(b, dtype=torch.bool) for k in DIMS}


def with_set(inputs: dict, key: str, x=None, times=None) -> dict:
    old = inputs[key]
    return {**inputs, key: SetBatch(old[0] if x is None else x, old[1], old.times if times is None else times)}


def run(model, inputs, present) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs, present)


# ------------------------------------------------------------------------------- time encoding


@pytest.mark.parametrize("encoding", ["sine", "learned"])
def test_time_encoding_follows_the_frame_times(encoding):
    model = agt(time_encoding=encoding)
    if encoding == "learned":  # a fresh table is ~0.02: give it weight so the check is not marginal
        with torch.no_grad():
            model.time.table.normal_(0, 1.0)
    inputs, present = batch()
    out = run(model, inputs, present)
    same = with_set(inputs, V, times=inputs[V].times.clone())
    torch.testing.assert_close(run(model, same, present), out, rtol=0, atol=0)
    shifted = with_set(inputs, V, times=inputs[V].times + 1.3)  # the video 1.3 s later
    assert (run(model, shifted, present) - out).abs().max() > 1e-3
    # a frame's own time counts, not only the set's offset: swap two audio frames' times
    ta = inputs[A].times.clone()
    ta[:, [3, 15]] = ta[:, [15, 3]]
    assert (run(model, with_set(inputs, A, times=ta), present) - out).abs().max() > 1e-3


def test_without_time_encoding_frames_are_an_unordered_set():
    model = agt(time_encoding="none")
    assert model.time is None and not any("time" in k for k in model.state_dict())
    inputs, present = batch()
    out = run(model, inputs, present)
    torch.testing.assert_close(run(model, with_set(inputs, V, times=inputs[V].times + 1.3), present), out)
    # permuting the audio frames with their times changes nothing either
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shuffled = with_set(inputs, A, x=inputs[A][0][:, perm], times=inputs[A].times[:, perm])
    torch.testing.assert_close(run(model, shuffled, present), out, atol=1e-5, rtol=1e-5)


def test_unknown_times_fall_back_to_the_frame_index():
    """NaN times (a set stored without times) and a plain ``(x, mask)`` pair both place frame i at
    i seconds: the same as passing times 0, 1, 2, ..."""
    model = agt()
    inputs, present = batch()
    index = torch.arange(6, dtype=torch.float32).expand(3, 6).clone()
    by_index = run(model, with_set(inputs, V, times=index), present)
    unknown = run(model, with_set(inputs, V, times=torch.full((3, 6), float("nan"))), present)
    plain = run(model, {**inputs, V: (inputs[V][0], inputs[V][1])}, present)
    torch.testing.assert_close(unknown, by_index, rtol=0, atol=0)
    torch.testing.assert_close(plain, by_index, rtol=0, atol=0)
    assert (by_index - run(model, inputs, present)).abs().max() > 1e-3  # true times differ from indices


# ------------------------------------------------------------------------------------ alignment


@pytest.mark.parametrize("share_blocks", [True, False])
def test_align_window_keeps_audio_queries_to_nearby_frames(share_blocks):
    """Audio spans 0-1.9 s; with a 0.3 s window the video frames at 4.25 s and 5.75 s are near no
    audio frame: what they hold cannot reach the guided stream, a near frame's content does. The
    intra-channel attention is not windowed (a far frame would reach the near ones through it), so
    it is off here to look at the cross-attention alone."""
    model = agt(align_window=0.3, intra_layers=0, share_blocks=share_blocks)
    inputs, present = batch()
    x = inputs[V][0]
    far, near = x.clone(), x.clone()
    far[1:, 4:] += 5.0 * torch.randn(2, 2, 16)  # frames at 4.25 s and 5.75 s (clips 1, 2)
    near[1:, 1] += 5.0 * torch.randn(2, 16)  # the frame at 0.75 s
    out = run(model, inputs, present)
    torch.testing.assert_close(run(model, with_set(inputs, V, x=far), present), out, rtol=0, atol=0)
    assert (run(model, with_set(inputs, V, x=near), present)[1:] - out[1:]).abs().max() > 1e-3
    # utterance-level sets are never cut off: the text still reaches the guided stream
    text = with_set(inputs, T, x=inputs[T][0] + 3.0)
    assert (run(model, text, present) - out).abs().max() > 1e-3
    # without the window the far frames count (same weights: the window is no parameter)
    model.cfg = AGTConfig(**{**model.cfg.__dict__, "align_window": 0.0})
    open_out = run(model, inputs, present)
    assert (run(model, with_set(inputs, V, x=far), present)[1:] - open_out[1:]).abs().max() > 1e-3


def test_align_window_query_without_frames_near_it_sees_the_null_token():
    """Video only far from every audio frame: each audio query sees the video null token alone, so
    the video frames' content does not matter at all; a clip without video gives the same."""
    model = agt(align_window=0.3, intra_layers=0)
    inputs, present = batch()
    late = with_set(inputs, V, times=inputs[V].times + 10.0)
    out = run(model, late, present)
    noisy = with_set(late, V, x=inputs[V][0] + torch.randn(3, 6, 16))
    torch.testing.assert_close(run(model, noisy, present), out, rtol=0, atol=0)
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------------------------- pooling


def test_null_token_is_not_pooled_when_the_clip_has_audio():
    """With every set present the audio null token is only a query (no intra layers, one-way
    attention): pooled without it (default), its value cannot matter; pooled with it (the old
    behaviour, ``pool_null=True``), it does. A clip without audio has only the null query."""
    inputs, present = batch()
    for pool_null, invariant in ((False, True), (True, False)):
        model = agt(intra_layers=0, pool_null=pool_null)
        out = run(model, inputs, present)
        with torch.no_grad():
            model.tok["audio__frames"].null.normal_(0, 3.0)
        moved = (run(model, inputs, present) - out).abs().max()
        assert (moved == 0) if invariant else (moved > 1e-3), (pool_null, float(moved))
    # no audio: the null token is the query, and both settings pool it
    no_audio = {**present, A: torch.tensor([True, False, False])}
    for pool_null in (False, True):
        model = agt(intra_layers=0, pool_null=pool_null)
        out = run(model, inputs, no_audio)
        with torch.no_grad():
            model.tok["audio__frames"].null.normal_(0, 3.0)
        diff = (run(model, inputs, no_audio) - out).abs().amax(1)
        assert diff[1:].min() > 1e-3 and (diff[0] > 1e-3) == pool_null


# ------------------------------------------------------------------------------- data and store


def write_frames(store: FeatureStore, key: str, names: list[str], values: list[np.ndarray],
                 times: list[np.ndarray] | None) -> None:
    fs = store.create(key, level="frame", dim=values[0].shape[1], provenance=Provenance(extractor="synthetic"),
                      dtype="float32")
    with fs.writer() as w:
        w.add_batch(names, values, times)


def test_frame_times_travel_from_the_store_and_are_subsampled_with_the_frames(tmp_path):
    store = FeatureStore(tmp_path / "s.zarr")
    names = ["c0", "c1", "c2"]
    rng = np.random.default_rng(0)
    n_frames = [12, 5, 9]
    video = [rng.normal(size=(n, 16)).astype(np.float32) for n in n_frames]
    video[0][:, 0] = np.arange(12)  # feature 0 holds the frame's index: which frames were kept
    vtimes = [(np.arange(n) * 0.5 + 0.25).astype(np.float32) for n in n_frames]  # 2 fps
    write_frames(store, V, names, video, vtimes)
    write_frames(store, "text/tokens", names[:2], [rng.normal(size=(4, 6)).astype(np.float32)] * 2, None)
    data = load_features(store, [V, "text/tokens"], max_frames=8)
    assert data.names == names
    kept = data.feats[V][0][:, 0].astype(int)
    assert len(kept) == 8 and kept[0] == 0 and kept[-1] == 11 and (np.diff(kept) > 0).all()
    np.testing.assert_array_equal(data.times[V][0], vtimes[0][kept])  # times follow their frames
    np.testing.assert_array_equal(data.times[V][1], vtimes[1])
    assert np.isnan(data.times["text/tokens"][0]).all() and data.times["text/tokens"][2] is None

    norm = Standardizer.fit(data, np.arange(3))
    inputs, present = make_batch(data, np.array([1, 0, 2]), norm)
    x, mask = inputs[V]  # still unpacks as a pair
    tv = times_of(inputs[V])
    assert x.shape == (3, 8, 16) and tv.shape == (3, 8)
    np.testing.assert_array_equal(tv[0, :5].numpy(), vtimes[1])
    assert torch.isnan(tv[0, 5:]).all() and not mask[0, 5:].any()  # padding: no time
    np.testing.assert_array_equal(tv[1].numpy(), vtimes[0][kept])
    tt = times_of(inputs["text/tokens"])
    assert torch.isnan(tt).all() and not present["text/tokens"][2]

    # a frame-level video set and untimed text tokens go through the AGT with frame-level audio
    write_frames(store, A, names, [rng.normal(size=(20, 8)).astype(np.float32) for _ in names],
                 [np.arange(20, dtype=np.float32) / 10] * 3)
    data = load_features(store, [A, V, "text/tokens"], max_frames=8)
    inputs, present = make_batch(data, np.arange(3), Standardizer.fit(data, np.arange(3)))
    for cfg in ({}, {"time_encoding": "learned", "align_window": 0.5}, {"bidirectional": True, "share_blocks": False}):
        torch.manual_seed(0)
        model = build_model("agt", {**TINY, **cfg}, data.dims, data.utt, 3).eval()
        out = run(model, inputs, present)
        assert out.shape == (3, 3) and torch.isfinite(out).all()
    for name in ("concat", "attention"):  # the baselines take the same batches
        assert torch.isfinite(build_model(name, {}, data.dims, data.utt, 3).eval()(inputs, present)).all()


# --------------------------------------------------------------------------------- old runs


def test_old_runs_keep_their_behaviour(tmp_path):
    """A config.json from before the time fields loads with the old behaviour: no time encoding
    (its state dict has no time parameters), no window, null query pooled."""
    new = AGTConfig()
    assert (new.time_encoding, new.align_window, new.pool_null) == ("sine", 0.0, False)
    old_fields = {k: v for k, v in new.__dict__.items() if k not in LEGACY_DEFAULTS["agt"] and not k.startswith("time_")}
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model": "agt", "model_config": old_fields, "features": [A, V, T]}))
    cfg = config_from_dict(AGTConfig, load_run(run_dir)["model_config"])
    assert (cfg.time_encoding, cfg.align_window, cfg.pool_null) == ("none", 0.0, True)
    # a saved config that has the fields keeps them; a user's partial config gets the new defaults
    saved = {**new.__dict__, "align_window": 0.5}
    assert upgrade_model_config("agt", saved) == saved
    assert upgrade_model_config("concat", {"hidden": 8}) == {"hidden": 8}
    assert config_from_dict(AGTConfig, {"width": 32}).pool_null is False

    torch.manual_seed(0)
    legacy = AudioGuidedTransformer(cfg, DIMS, 3, UTT).eval()
    assert legacy.time is None
    state = legacy.state_dict()
    assert not any("time" in k for k in state)
    inputs, present = batch()
    out = run(legacy, inputs, present)
    plain = {k: (v[0], v[1]) for k, v in inputs.items()}  # the old input: no times at all
    torch.testing.assert_close(run(legacy, plain, present), out, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="time"):  # new defaults cannot pretend to be the old model
        AudioGuidedTransformer(AGTConfig(**{**cfg.__dict__, "time_encoding": "sine"}), DIMS, 3, UTT).load_state_dict(state)


# ----------------------------------------------------------------------- learning with time


def speech_store(root: Path, n: int, seed: int = 0) -> tuple[FeatureStore, np.ndarray]:
    """A task only time can solve. Speech (audio frames at 5 fps, 8-d noise) covers 2 s starting
    anywhere in [0, 3] s of a 5 s clip; the video (CLIP-like frames at 2 fps, 16-d noise) has one
    event frame. Label 1: the video event falls inside the speech; 0: at least 1 s outside it. The
    frame contents have the same distribution in both classes: without times the frames are two
    unordered sets, and nothing tells the classes apart."""
    rng = np.random.default_rng(seed)
    event = rng.normal(size=16)
    event *= 3.0 / np.linalg.norm(event)
    tv = np.arange(10) / 2 + 0.25
    names, labels, audio, audio_t, video = [], [], [], [], []
    for i in range(n):
        y = i % 2
        while True:
            start = rng.uniform(0.0, 3.0)
            inside = [j for j in range(10) if start <= tv[j] <= start + 2.0]
            outside = [j for j in range(10) if tv[j] < start - 1.0 or tv[j] > start + 3.0]
            if inside if y else outside:
                break
        v = rng.normal(size=(10, 16))
        v[rng.choice(inside if y else outside)] += event
        ta = start + np.arange(11) / 5
        names.append(f"clip{i:04d}")
        labels.append(y)
        audio.append(rng.normal(size=(11, 8)).astype(np.float32))
        audio_t.append(ta.astype(np.float32))
        video.append(v.astype(np.float32))
    store = FeatureStore(root)
    write_frames(store, A, names, audio, audio_t)
    write_frames(store, V, names, video, [tv.astype(np.float32)] * n)
    return store, np.array(labels)


def held_out_accuracy(data, y: np.ndarray, train: np.ndarray, test: np.ndarray, cfg: dict, seed: int,
                      epochs: int = 15) -> float:
    """Train the AGT a fixed number of epochs (no model selection), accuracy on ``test``."""
    torch.manual_seed(seed)
    model = build_model("agt", {**TINY, **cfg}, data.dims, data.utt, 2)
    norm = Standardizer.fit(data, train)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    order_rng = np.random.default_rng(seed)
    target = torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        order = order_rng.permutation(train)
        for lo in range(0, len(order), 16):
            rows = order[lo:lo + 16]
            inputs, present = make_batch(data, rows, norm)
            loss = torch.nn.functional.cross_entropy(model(inputs, present), target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    inputs, present = make_batch(data, test, norm)
    return float((run(model, inputs, present).argmax(1) == target[test]).float().mean())


def test_time_aware_agt_learns_what_the_time_blind_one_cannot(tmp_path):
    store, y = speech_store(tmp_path / "speech.zarr", 192)
    data = load_features(store, [A, V])
    assert not data.utt[A] and not data.utt[V] and len(data.times[V][0]) == 10
    train, test = np.arange(144), np.arange(144, 192)
    aware = [held_out_accuracy(data, y, train, test, {"align_window": 0.3}, seed) for seed in (0, 1)]
    blind = [held_out_accuracy(data, y, train, test, {"time_encoding": "none"}, seed) for seed in (0, 1)]
    print(f"held-out accuracy, sine + 0.3 s window: {aware}; time_encoding=none: {blind}")
    assert min(aware) >= AWARE_FLOOR and max(blind) <= BLIND_CEILING
    assert np.mean(aware) - np.mean(blind) >= MARGIN


def test_linear_skip_adds_a_linear_classifier_on_the_inputs():
    """``linear_skip``: logits = AGT head + W_s [mean frames of each set], absent sets zeroed; with the
    head zeroed the model is exactly that linear classifier. Off by default and for old runs."""
    assert AGTConfig().linear_skip is False and LEGACY_DEFAULTS["agt"]["linear_skip"] is False
    inputs, present = batch()
    plain, wide = agt(), agt(linear_skip=True)
    assert plain.skip is None and wide.skip.in_features == sum(DIMS.values())
    # the skip module is made last: every other weight starts the same, so the difference is the skip
    for (k, a), (_, b) in zip(plain.state_dict().items(), wide.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    with torch.no_grad():
        wide.head[-1].weight.zero_()
        wide.head[-1].bias.zero_()
        present[V] = torch.tensor([True, False, True])  # clip 1 lacks video: its video term is zero
        got = wide(inputs, present)
        xs = []
        for k in (A, V, T):
            x, mask = inputs[k]
            m = mask.unsqueeze(-1).float()
            xs.append((x * m).sum(1) / m.sum(1) * present[k].float().unsqueeze(-1))
        torch.testing.assert_close(got, wide.skip(torch.cat(xs, dim=1)))
