"""Issue 8, case 9: rerunning into an existing feature set with another model, compute dtype or
decode setting is refused (before any clip is extracted) unless ``--force``, which starts it anew.

Two tiny random HuBERTs with different weights saved in folders of the same name (so the default
set key is the same and only the weights hash tells them apart), through ``mer extract audio``.
"""

from __future__ import annotations

import numpy as np
import pytest
from faultkit import (
    assert_check_passes,
    flat,
    mer,
    ok,
    report_counts,
    tiny,
    wav_clips,
    write_table,
)
from mer.store import FeatureStore

pytest.importorskip("transformers")

KEY = "audio/hf-speech-hubert-utt"


def test_case9_other_model_dtype_or_decode_refused_unless_force(tmp_path):
    rows = wav_clips(tmp_path / "media", 12)
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    base = ("extract", "audio", table, "--store", store, "-e", "hf-speech", "-O", "layers=last2")
    ok(mer(*base, "-m", tiny("hubert")))
    before = FeatureStore(store)[KEY].read(dtype="float32")
    other = tiny("hubert:7")  # same folder name, other weights

    for change, field in [(("-m", other), "weights_hash"),
                          (("-m", tiny("hubert"), "--dtype", "bfloat16"), "config.dtype"),
                          (("-m", tiny("hubert"), "--sample-rate", "8000"), "decode.audio.sample_rate")]:
        res = mer(*base, *change)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        msg = flat(res)
        assert f"error: feature set '{KEY}' was written with a different provenance; refusing to mix them." in msg
        assert f"{field}: stored=" in msg and "Use --force" in msg
        # refused before any work: the set is as it was
        fs = FeatureStore(store)[KEY]
        assert len(fs.names()) == 12 and fs.failures() == {}
        np.testing.assert_array_equal(fs.read(dtype="float32"), before)
        assert_check_passes(store)

    res = ok(mer(*base, "-m", other, "--force"))
    assert report_counts(res) == (12, 12, 0, 0)  # started anew: every clip redone
    fs = FeatureStore(store)[KEY]
    assert len(fs.names()) == 12 and len(set(fs.names())) == 12 and fs.provenance.model == str(other)
    after = fs.read(dtype="float32")
    assert np.isfinite(after).all() and not np.allclose(after, before, atol=1e-3)
    assert_check_passes(store)


def test_case9_features_written_by_older_code_refused_unless_force(tmp_path):
    """A set whose vectors an older mer computed differently (trimmed Whisper before its features
    stopped depending on the batch) is refused by its features_version, not silently extended."""
    rows = wav_clips(tmp_path / "media", 3, seconds=1.0)
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    base = ("extract", "audio", table, "--store", store, "-e", "whisper-ct2", "-O", "input_seconds=0", "--set", "w")
    ok(mer(*base, "--limit", "2"))
    fs = FeatureStore(store)["audio/w"]
    assert fs.provenance.config["features_version"] == 2
    # what the older code recorded: the same config without a features_version
    meta = fs.group(mode="r+").attrs.asdict()
    attr = next(k for k in meta if "provenance" in meta[k])
    del meta[attr]["provenance"]["config"]["features_version"]
    fs.group(mode="r+").attrs[attr] = meta[attr]
    res = mer(*base)
    assert res.returncode == 1 and "config.features_version: stored=None" in flat(res)
    assert FeatureStore(store)["audio/w"].names() == fs.names() and len(fs.names()) == 2
    res = ok(mer(*base, "--force"))
    assert report_counts(res) == (3, 3, 0, 0)
    assert_check_passes(store)
    # native 30 s input never changed: its sets record no version and keep matching older ones
    ok(mer("extract", "audio", table, "--store", store, "-e", "whisper-ct2", "--set", "w30", "--limit", "1"))
    assert "features_version" not in FeatureStore(store)["audio/w30"].provenance.config
