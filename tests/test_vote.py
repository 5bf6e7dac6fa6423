"""`mer fuse vote`: majority with ties broken by mean probability, probability averaging, refusals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import mer_cli
from mer.fusion.predict import write_predictions
from mer.fusion.vote import vote

CLASSES = ["angry", "happy", "sad"]


def _write(tmp: Path, name: str, probs: list[list[float]], discrete: list[str] | None = None) -> Path:
    path, _ = write_predictions(tmp / f"{name}.csv", ["c1", "c2", "c3"], np.array(probs), CLASSES, discrete)
    return path


def test_majority_ties_and_mean(tmp_path):
    a = _write(tmp_path, "a", [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    b = _write(tmp_path, "b", [[0.7, 0.2, 0.1], [0.1, 0.45, 0.45], [0.1, 0.8, 0.1]])
    c = _write(tmp_path, "c", [[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    names, out, mean, classes = vote([a, b, c], "majority")
    assert names == ["c1", "c2", "c3"] and classes == CLASSES
    # c1: angry twice; c2: one vote each -> highest mean probability (sad 0.383); c3: sad twice
    assert out == ["angry", "sad", "sad"]
    _, out_mean, mean, _ = vote([a, b, c], "mean")
    np.testing.assert_allclose(mean[1], [0.8 / 3, 1.05 / 3, 1.15 / 3])
    assert out_mean == [CLASSES[i] for i in mean.argmax(1)] == ["angry", "sad", "happy"]


def test_majority_without_probabilities_and_refusals(tmp_path):
    files = []
    for i, row in enumerate((["angry", "happy", "sad"], ["happy", "sad", "sad"], ["sad", "happy", "angry"])):
        p = tmp_path / f"p{i}.csv"
        p.write_text("name,discrete\n" + "".join(f"c{k + 1},{v}\n" for k, v in enumerate(row)))
        files.append(p)
    _, out, mean, _ = vote(files, "majority")
    assert mean is None and out == ["angry", "happy", "sad"]  # c1 three-way tie -> the first file's choice
    with pytest.raises(ValueError, match="mean voting needs probabilities"):
        vote(files, "mean")
    other = tmp_path / "other.csv"
    other.write_text("name,discrete\nc1,angry\nzz,sad\n")
    with pytest.raises(ValueError, match="predict different clips"):
        vote([files[0], other], "majority")
    res = subprocess.run([*mer_cli(), "fuse", "vote", str(files[0]), "--out", str(tmp_path / "v.csv")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "at least two prediction files" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([*mer_cli(), "fuse", "vote", *map(str, files), "--out", str(tmp_path / "v.csv")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "v.csv").read_text().splitlines() == ["name,discrete", "c1,angry", "c2,happy", "c3,sad"]
