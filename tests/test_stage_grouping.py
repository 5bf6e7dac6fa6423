"""The stage groups decoded clips by length before batching: less padding, same features."""

from __future__ import annotations

import numpy as np

from conftest import MER2023
from mer.extractors.base import AudioClip, TextClip
from mer.pipeline.inputs import DecodeSettings
from mer.pipeline.stage import StageSpec, item_length, length_batches, run_stage
from mer.store import FeatureStore


def test_length_batches_put_similar_lengths_together() -> None:
    lengths = [5, 40, 7, 38, 6, 41, 39, 8]
    items = [AudioClip(f"c{i}", np.zeros(n, np.float32)) for i, n in enumerate(lengths)]
    batches = list(length_batches(items, 4))
    assert [[item_length(x) for x in b] for b in batches] == [[41, 40, 39, 38], [8, 7, 6, 5]]
    padded = sum(len(b) * max(map(item_length, b)) for b in batches)
    unsorted = sum(len(b) * max(map(item_length, b)) for b in length_batches(items, 4, sort=False))
    assert padded == 4 * 41 + 4 * 8 < unsorted == 4 * 40 + 4 * 41  # padding: 12 samples instead of 140
    assert [x.name for b in length_batches(items, 3, sort=False) for x in b] == [x.name for x in items]
    assert item_length(TextClip("t", "four")) == 4


def test_grouped_stage_equals_table_order_stage(tmp_path) -> None:
    specs = {}
    for groups in (1, 4):
        specs[groups] = StageSpec(modality="text", clips=MER2023 / "transcription.csv",
                                  store=tmp_path / f"g{groups}.zarr", extractor="sentence",
                                  config={"model": "all-MiniLM-L6-v2", "batch_size": 8, "empty": "encode"},
                                  decode=DecodeSettings(text_column="english"), length_groups=groups)
    assert StageSpec(modality="video", clips=tmp_path, store=tmp_path, extractor="clip").groups() == 1
    assert StageSpec(modality="audio", clips=tmp_path, store=tmp_path, extractor="hf-speech").groups() == 8
    reports = {g: run_stage(s, limit=60, progress=False) for g, s in specs.items()}
    assert all(r.done == 60 and not r.failed for r in reports.values())
    a = FeatureStore(tmp_path / "g1.zarr").sets()[0]
    one, four = FeatureStore(tmp_path / "g1.zarr")[a], FeatureStore(tmp_path / "g4.zarr")[a]
    names = one.names()
    assert sorted(four.names()) == sorted(names)
    assert four.names() != names  # written in length order, not table order
    np.testing.assert_allclose(one.read(names, dtype="float32"), four.read(names, dtype="float32"), atol=2e-3)


def test_trimmed_whisper_features_do_not_depend_on_the_batch() -> None:
    """``input_seconds=0``: each clip is padded to its own whole seconds, so its vector is the same
    alone or batched with longer clips (the encoder has no attention mask)."""
    from conftest import SAMPLE
    from mer.extractors.whisper_ct2 import WhisperCT2, WhisperCT2Config
    from mer.pipeline.decode_audio import decode_audio

    paths = sorted((SAMPLE / "audio").glob("*.flac"))[:3]
    clips = [decode_audio(p.stem, p) for p in paths]
    clips.append(AudioClip("long", np.concatenate([c.samples for c in clips])))  # ~11 s
    ext = WhisperCT2(WhisperCT2Config(input_seconds=0, batch_size=4))
    together = [f.values for f in ext.extract(clips)]
    alone = [ext.extract([c])[0].values for c in clips]
    np.testing.assert_allclose(np.stack(together), np.stack(alone), atol=1e-4)
    # shorter windows: 10 s of input per forward, the ~11 s clip in two windows, all frames kept
    frames = WhisperCT2(WhisperCT2Config(input_seconds=10, level="frame")).extract([clips[-1]])[0].values
    assert len(frames) == int(np.ceil(len(clips[-1].samples) / 16000 * 50))
