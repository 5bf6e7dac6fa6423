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
