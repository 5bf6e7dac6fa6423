"""Issue 8, case 5: duplicate clip names in a clip table or label file, an unknown label class, a
missing file path, an empty name. Table-level faults stop the command before any work (a store is
neither created nor touched) with one line naming the file, the line or clip, and the problem; a
missing media file is a per-clip failure (see also ``test_faults_media.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from faultkit import (
    feature_table,
    flat,
    mer,
    write_table,
    write_wav,
)
from mer.store.tables import MER_CLASSES, TableError, read_labels


def _one_line_error(res, *fragments: str) -> None:
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    for f in fragments:
        assert f in flat(res), (f, flat(res))


def test_case5_duplicate_clip_names_refused_before_any_work(tmp_path):
    feature_table(tmp_path / "feats.csv", ["a", "b", "c"])
    table = tmp_path / "clips.csv"
    table.write_text("name,audio\na,a.wav\nb,b.wav\na,a2.wav\nc,c.wav\n")
    store = tmp_path / "s.zarr"
    res = mer("extract", "audio", table, "--store", store, "-e", "table", "-m", tmp_path / "feats.csv")
    _one_line_error(res, f"error: {table}: 1 duplicate clip names: a")
    assert not store.exists()
    _one_line_error(mer("clips", "check", table), "1 duplicate clip names: a")

    table.write_text("name,audio\na,a.wav\n,b.wav\n")
    _one_line_error(mer("clips", "check", table), f"{table}:3: empty clip name")


def test_case5_label_file_duplicates_unknown_class(tmp_path):
    pred = write_table(tmp_path / "pred.csv", [{"name": "s1", "discrete": "happy"}, {"name": "s2", "discrete": "sad"}])
    labels = tmp_path / "labels.csv"
    labels.write_text("name,discrete\ns1,happy\ns2,sad\ns1,angry\n")
    _one_line_error(mer("fuse", "eval", "--pred", pred, "--labels", labels),
                    f"error: {labels}: 1 duplicate clip names: s1")
    labels.write_text("name,discrete\ns1,happy\ns2,\n")
    _one_line_error(mer("fuse", "eval", "--pred", pred, "--labels", labels),
                    f"error: {labels}:3: clip 's2' has an empty label")
    # a class outside the task's list (a typo) is refused by line and clip where the list is known
    labels.write_text("name,discrete\ns1,happy\ns2,hapy\n")
    with pytest.raises(TableError) as err:
        read_labels(labels, classes=MER_CLASSES)
    assert str(err.value).startswith(f"{labels}:3: clip 's2' has unknown class 'hapy' (known: neutral, angry")


def test_case5_missing_file_path_named_before_a_run(tmp_path):
    """`mer clips check` names it before a run (a run records it as a clip failure and does the
    rest: ``test_faults_media.py``, clip ``missing``)."""
    write_wav(tmp_path / "here.wav", np.zeros(800))
    table = write_table(tmp_path / "clips.csv", [{"name": "here", "audio": "here.wav"},
                                                 {"name": "gone", "audio": "gone.wav"}])
    res = mer("clips", "check", table)
    assert res.returncode == 1 and f"clip gone: audio file not found: {tmp_path / 'gone.wav'}" in flat(res)
    assert "2 clips, 1 with problems" in res.stdout
