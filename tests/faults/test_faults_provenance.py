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
