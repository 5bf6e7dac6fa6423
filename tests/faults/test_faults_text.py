"""Issue 8, case 4: empty, non-UTF-8 and extremely long subtitles through ``mer extract text``.

A tiny random BERT (WordPiece vocabulary, ``model_max_length`` 64) loaded by path by ``hf-text``.
Empty and whitespace-only subtitles fail by name; an over-long subtitle is cut to the model's max
length, kept, and the cut is reported and recorded per clip; a clip table with bytes that are not
UTF-8 is refused as a whole before any work, naming the line, clip, column and byte.
"""

from __future__ import annotations

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
    write_table,
)
from mer.store import FeatureStore

pytest.importorskip("transformers")

KEY = "text/hf-text-bert-utt"


def test_case4_empty_and_long_subtitles(tmp_path):
    from mer.extractors.base import TextClip
    from mer.extractors.hf_text import HFTextConfig, HFTextExtractor

    model = tiny("bert")
    long = " ".join(["look , he is getting married too , you also need to rearrange yourself ."] * 40)
    rows = [{"name": "ok", "text": "why are you so angry ?"},
            {"name": "empty", "text": ""},
            {"name": "spaces", "text": "   \t "},
            {"name": "long", "text": long},
            {"name": "ok2", "text": "yes ."}]
    table = write_table(tmp_path / "clips.csv", rows)
    store = tmp_path / "s.zarr"
    res = mer("extract", "text", table, "--store", store, "-e", "hf-text", "-m", model)
    assert_failures(res, store, KEY, {"empty": "empty subtitle", "spaces": "empty subtitle"})
    assert report_counts(res) == (5, 3, 0, 2)

    ext = HFTextExtractor(HFTextConfig(model=str(model)))
    n_tokens = len(ext.tokenizer(long)["input_ids"])
    assert ext.max_len == 64 and n_tokens > 600
    # the cut is said and recorded: how many tokens were dropped, per clip
    assert f"truncated 1 clips to the model's max length: long ({n_tokens - 64} tokens dropped)" in flat(res)
    fs = FeatureStore(store)[KEY]
    assert sorted(fs.names()) == ["long", "ok", "ok2"]
    assert fs.read_extra("truncated_tokens", ["long", "ok"]).tolist()[0] == n_tokens - 64
    assert np.isnan(fs.read_extra("truncated_tokens", ["ok"])[0])
    # the stored vector is the model's on the first 64 tokens
    want = ext.extract([TextClip("long", long)])[0].values
    np.testing.assert_allclose(fs.read(["long"], dtype="float32")[0], want, atol=2e-3, rtol=2e-3)

    # a rerun attempts only the failed clips, which fail again for the same reason
    again = mer("extract", "text", table, "--store", store, "-e", "hf-text", "-m", model)
    assert_failures(again, store, KEY, {"empty": "empty subtitle", "spaces": "empty subtitle"})
    assert report_counts(again) == (5, 0, 3, 2)


def test_case4_non_utf8_subtitle_refused_by_line_and_clip(tmp_path):
    """Latin-1 bytes in one subtitle: the whole table is suspect (another encoding can also form
    valid but wrong UTF-8 elsewhere), so nothing runs and the message points at the first bad cell."""
    model = tiny("bert")
    store = tmp_path / "s.zarr"
    good = write_table(tmp_path / "good.csv", [{"name": "ok", "text": "yes ."}])
    ok(mer("extract", "text", good, "--store", store, "-e", "hf-text", "-m", model))
    bad = tmp_path / "clips.csv"
    bad.write_bytes(b"name,text\nok,yes .\nlatin,caf\xe9 cr\xe8me\nok2,no .\n")
    res = mer("extract", "text", bad, "--store", store, "-e", "hf-text", "-m", model)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    msg = flat(res)
    assert f"error: {bad}:3: clip 'latin', column 'text': not UTF-8 text (byte 0xe9 at character 4" in msg
    assert "save the file as UTF-8" in msg
    # refused before any work: the store is as it was and checks clean
    assert FeatureStore(store)[KEY].names() == ["ok"] and FeatureStore(store)[KEY].failures() == {}
    assert_check_passes(store)
    # a bad byte in a clip name is refused the same way (names become store keys)
    bad.write_bytes(b"name,text\nok,yes .\nma\xf1ana,hola\n")
    res = mer("clips", "check", bad)
    assert res.returncode == 1 and f"{bad}:3: clip name, column 'name': not UTF-8 text (byte 0xf1" in flat(res)
