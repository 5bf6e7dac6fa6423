"""Issue 8, case 6: a model that outputs NaN/Inf, or values too large for float16.

Real tiny HuBERTs whose last layer norm is set to NaN, or scaled by 1e6, saved and loaded by path
through ``mer extract audio``. The writer refuses every such vector by name (nothing is stored);
with ``--store-dtype float32`` the large values are stored. A NaN that reaches the arrays some
other way (a foreign writer, a damaged disk) is reported by ``mer store check`` by clip, and
``mer store repair`` drops it so that a rerun redoes exactly that clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    assert_check_passes,
    assert_failures,
    flat,
    mer,
    ok,
    report_counts,
    tiny,
    wav_clips,
    write_table,
)
from mer.store import FeatureStore

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _broken_hubert(dst: Path, how: str) -> Path:
    """The tiny HuBERT with its last layer norm's weight set to NaN (``nan``) or times 1e6 (``huge``)."""
    from transformers import HubertModel

    model = HubertModel.from_pretrained(tiny("hubert"))
    with torch.no_grad():
        w = model.encoder.layers[-1].final_layer_norm.weight
        w.fill_(float("nan")) if how == "nan" else w.mul_(1e6)
    model.save_pretrained(dst)
    return dst


def test_case6_nan_inf_and_overflow_refused_by_clip(tmp_path):
    rows = wav_clips(tmp_path / "media", 3)
    table = write_table(tmp_path / "clips.csv", rows)
    names = [r["name"] for r in rows]
    store = tmp_path / "s.zarr"
    nan_model = _broken_hubert(tmp_path / "nan" / "hubert", "nan")
    huge_model = _broken_hubert(tmp_path / "huge" / "hubert", "huge")

    res = mer("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", nan_model, "-O", "layers=last2",
              "--set", "nan")
    assert_failures(res, store, "audio/nan", dict.fromkeys(names, "32 of 32 values are NaN/Inf; not stored"))
    assert report_counts(res) == (3, 0, 0, 3) and FeatureStore(store)["audio/nan"].names() == []

    res = mer("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", huge_model, "-O", "layers=last2",
              "--set", "huge")
    failed = assert_failures(res, store, "audio/huge", dict.fromkeys(names, "values overflow float16"))
    assert all("--store-dtype float32" in r for r in failed.values())
    # the hint works: float32 holds them (a new set: another store dtype is another provenance)
    res = ok(mer("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", huge_model, "-O",
                 "layers=last2", "--set", "huge32", "--store-dtype", "float32"))
    x = FeatureStore(store)["audio/huge32"].read(names)
    assert np.isfinite(x).all() and np.abs(x).max() > 65504  # beyond float16's range
    assert_check_passes(store)


def test_case6_nan_in_the_arrays_reported_and_repaired(tmp_path):
    """NaN written into a committed row behind mer's back: check names the clip, repair drops it,
    the rerun redoes only that clip and gets its true vector back."""
    import zarr

    rows = wav_clips(tmp_path / "media", 6)
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    args = ("extract", "audio", table, "--store", store, "-e", "hf-speech", "-m", tiny("hubert"),
            "-O", "layers=last2")
    ok(mer(*args))
    key = "audio/hf-speech-hubert-utt"
    fs = FeatureStore(store)[key]
    before = fs.read(dtype="float32")
    names = fs.names()
    victim = names[2]
    values = zarr.open_array(str(fs.path / "values"), mode="r+")
    values[2, 5] = np.nan  # one value of one row

    res = mer("store", "check", store)
    assert res.returncode == 1 and f"{key} clip '{victim}': vectors missing or NaN/Inf" in flat(res)
    assert "1 problems found, 0 fixed, 1 remaining" in res.stdout
    res = ok(mer("store", "repair", store))
    assert f"{key}: dropped 1 clips whose data was missing (a rerun redoes them): {victim}" in flat(res)
    assert_check_passes(store)
    assert victim not in FeatureStore(store)[key].names()

    res = ok(mer(*args))
    assert report_counts(res) == (6, 1, 5, 0)  # only the dropped clip is redone
    after = FeatureStore(store)[key]
    assert sorted(after.names()) == sorted(names) and len(after.names()) == 6
    np.testing.assert_array_equal(after.read(names, dtype="float32"), before)
    assert_check_passes(store)
