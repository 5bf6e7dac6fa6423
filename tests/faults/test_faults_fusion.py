"""Issue 8, case 11: ``mer fuse predict`` with a store whose feature sets or dims differ from the
run's, or with clips the store lacks: one clear error, exit 1, no predictions written.

A small real store (two utterance-level sets, 48 clips of 4 well-separated classes) written with
the store API, a real 2-fold ``mer fuse train`` run of 2 epochs through the console script, then
``mer fuse predict`` against the same store (works) and against stores that differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faultkit import flat, mer, ok
from mer.store import FeatureStore, Provenance

pytest.importorskip("torch")

A, T = "audio/a", "text/t"
CLASSES = ["angry", "happy", "neutral", "sad"]


def _write_store(path: Path, names: list[str], y: np.ndarray, *, dims: dict[str, int], models: dict[str, str],
                 skip: tuple[str, ...] = ()) -> Path:
    rng = np.random.default_rng(0)
    store = FeatureStore(path)
    for key, dim in dims.items():
        if key in skip:
            continue
        x = rng.standard_normal((len(names), dim)).astype(np.float32) * 0.3
        x[np.arange(len(names)), y % dim] += 2.0  # the class shows in one dimension
        fs = store.create(key, level="utt", dim=dim, dtype="float32",
                          provenance=Provenance(extractor="synthetic", config={"dim": dim}, model=models[key]))
        with fs.writer() as w:
            w.add_batch(names, x)
    return path


def test_case11_predict_refuses_a_store_that_differs(tmp_path):
    names = [f"clip{i:03d}" for i in range(48)]
    y = np.arange(48) % 4
    dims, models = {A: 8, T: 6}, {A: "m-audio", T: "m-text"}
    good = _write_store(tmp_path / "good.zarr", names, y, dims=dims, models=models)
    labels = tmp_path / "labels.csv"
    labels.write_text("name,discrete\n" + "".join(f"{n},{CLASSES[c]}\n" for n, c in zip(names, y)))
    run = tmp_path / "run"
    ok(mer("fuse", "train", "--store", good, "-f", f"{A},{T}", "-l", labels, "-o", run, "-m", "concat", "-k", "2",
           "-T", "epochs=2", "-T", "batch_size=16"))
    res = ok(mer("fuse", "predict", "--run", run, "--store", good, "--out", tmp_path / "pred.csv"))
    assert len((tmp_path / "pred.csv").read_text().splitlines()) == 49

    # a set missing and another set made by another model: both named, with what differs
    other = _write_store(tmp_path / "other.zarr", names, y, dims=dims, models={**models, A: "m-audio-2"}, skip=(T,))
    res = mer("fuse", "predict", "--run", run, "--store", other, "--out", tmp_path / "x.csv")
    msg = flat(res)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "the store's feature sets differ from those the run was trained on" in msg
    assert f"{T}: missing from the store (sets: {A})" in msg
    assert f"{A}: model: run='m-audio' store='m-audio-2'" in msg
    assert not (tmp_path / "x.csv").exists()

    # another dim
    wide = _write_store(tmp_path / "wide.zarr", names, y, dims={A: 8, T: 7}, models=models)
    res = mer("fuse", "predict", "--run", run, "--store", wide, "--out", tmp_path / "x.csv")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"{T}: level/dim utt/7 but the run was trained on utt/6" in flat(res)
    assert not (tmp_path / "x.csv").exists()

    # clips the store does not have: named
    want = tmp_path / "names.txt"
    want.write_text("clip000\nghost-1\nclip001\n")
    res = mer("fuse", "predict", "--run", run, "--store", good, "--names", want, "--out", tmp_path / "x.csv")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "lacks 1 of 3 requested clips: ghost-1" in flat(res)
    assert not (tmp_path / "x.csv").exists()
