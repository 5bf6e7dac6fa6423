"""Self-training (`mer fuse selftrain`) on the bundled MER2023 subtitles: train-labels labelled,
test2 + test3 as the unlabelled pool. Pseudo-labelled clips only ever train; validation folds stay
the base run's real clips; the best round is what `mer fuse predict` uses."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import HANG_S, MER2023, MER_CLASSES, mer_cli, one_thread_env, one_torch_thread
from mer.fusion.selftrain import SelfTrainConfig, select_pseudo


def test_select_pseudo_thresholds_top_k_and_agreement():
    probs = np.array([[0.95, 0.05], [0.91, 0.09], [0.97, 0.03], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95]])
    rows, labels = select_pseudo(probs, ["a", "b"], SelfTrainConfig(threshold=0.9))
    assert rows.tolist() == [0, 1, 2, 5] and labels.tolist() == [0, 0, 0, 1]
    rows, _ = select_pseudo(probs, ["a", "b"], SelfTrainConfig(threshold=0.9, class_thresholds={"b": 0.7}))
    assert rows.tolist() == [0, 1, 2, 3, 5]
    rows, labels = select_pseudo(probs, ["a", "b"], SelfTrainConfig(threshold=0.9, top_k=2))
    assert rows.tolist() == [0, 2, 5]  # the two most confident "a" (0.97, 0.95) and the one "b"
    votes = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 1, 1]])
    rows, _ = select_pseudo(probs, ["a", "b"], SelfTrainConfig(threshold=0.9), votes)
    assert rows.tolist() == [0, 2, 5]  # fold models disagree on row 1
    with pytest.raises(ValueError, match="unknown classes c"):
        select_pseudo(probs, ["a", "b"], SelfTrainConfig(class_thresholds={"c": 0.5}))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, env=one_thread_env(),
                          timeout=HANG_S)


def _val_names(run: Path) -> list[list[str]]:
    return [torch.load(p, weights_only=True)["val_names"] for p in sorted(run.glob("fold*.pt"))]


def test_selftrain_rounds_on_real_pool(mer_text, tmp_path):
    out = tmp_path / "st"
    res = _run("fuse", "selftrain", "--run", mer_text / "run", "--store", mer_text / "features.zarr",
               "--pool", mer_text / "pool.csv", "--out", out, "--rounds", "2", "--threshold", "0.7",
               "--top-k", "60", "--patience", "2")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "selftrain.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and summary["pool"] == 1246
    for r in rounds[1:]:
        counts = r["pseudo_per_class"]
        assert set(counts) == set(MER_CLASSES) and all(0 <= v <= 60 for v in counts.values())
        assert sum(counts.values()) > 30
    for r in rounds:
        assert abs(sum(r["pool_predicted"].values()) - 1) < 1e-3
    # the best round is chosen on the inner selection splits, never on the reported out-of-fold WAF
    best = max(range(3), key=lambda i: rounds[i]["select_score"])
    assert summary["best_round"] == best and summary["best_by"] == "select_score"
    assert (out / "selftrain.png").read_bytes()[:4] == b"\x89PNG"

    labelled = {row["name"] for row in csv.DictReader(open(MER2023 / "train-labels.csv"))}
    base_val = _val_names(mer_text / "run")
    for r in (1, 2):
        run = out / f"round{r}"
        assert _val_names(run) == base_val  # the base run's folds, real clips only
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["oof"]["n"] == len(labelled)
        assert all(f["n_pseudo"] > 0 and f["n_train"] == f["n_pseudo"] + len(labelled) - f["n_val"]
                   for f in metrics["folds"])
        with open(run / "oof_predictions.csv") as f:
            assert {row["name"] for row in csv.DictReader(f)} == labelled

    # `predict --run OUT` uses the best round
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    best_dir = out / rounds[best]["dir"] if best else Path(rounds[0]["dir"])
    for run, dest in ((out, a), (best_dir, b)):
        res = _run("fuse", "predict", "--run", run, "--store", mer_text / "features.zarr",
                   "--names", MER2023 / "test1-labels.csv", "--out", dest)
        assert res.returncode == 0, res.stderr
    assert a.with_name("a_probs.csv").read_text() == b.with_name("b_probs.csv").read_text()


def test_selftrain_refusals(mer_text, tmp_path):
    pool = tmp_path / "pool.csv"
    pool.write_text("name\nsample_00000011\nsample_not_extracted\n")
    res = _run("fuse", "selftrain", "--run", mer_text / "run", "--store", mer_text / "features.zarr",
               "--pool", pool, "--out", tmp_path / "st")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "sample_not_extracted" in res.stderr and "not extracted" in res.stderr
    res = _run("fuse", "selftrain", "--run", mer_text / "run", "--store", mer_text / "features.zarr",
               "--pool", mer_text / "pool.csv", "--out", tmp_path / "st", "--agreement")
    assert res.returncode == 1 and "needs source 'ensemble'" in res.stderr


def test_train_classes_option_refuses_a_typo(mer_text, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,discrete\nsample_00000011,happy\nsample_00000018,hapy\n")
    res = _run("fuse", "train", "-s", mer_text / "features.zarr", "-f", "text/minilm", "-l", labels,
               "-o", tmp_path / "run", "--classes", "mer")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "hapy" in res.stderr and "sample_00000018" in res.stderr


def test_selftrain_ensemble_source_with_agreement_and_prior_correction(mer_text, tmp_path):
    """Ensemble pseudo-labels are the same for every fold; agreement of all fold models and EM-corrected
    pool posteriors are recorded; fewer clips pass with agreement than without."""
    from mer.fusion.selftrain import run_selftrain
    from mer.store.tables import read_names

    pool = read_names(mer_text / "pool.csv")
    common = dict(rounds=1, threshold=0.6, source="ensemble", prior_correction="em")
    with one_torch_thread():
        loose = run_selftrain(mer_text / "run", mer_text / "features.zarr", pool, tmp_path / "loose",
                              SelfTrainConfig(**common), progress=False)
        strict = run_selftrain(mer_text / "run", mer_text / "features.zarr", pool, tmp_path / "strict",
                               SelfTrainConfig(**common, agreement=True), progress=False)
    for summary, out in ((loose, tmp_path / "loose"), (strict, tmp_path / "strict")):
        folds = json.loads((out / "round1" / "metrics.json").read_text())["folds"]
        assert len({f["n_pseudo"] for f in folds}) == 1  # one ensemble selection shared by all folds
        assert folds[0]["n_pseudo"] == round(sum(summary["rounds"][1]["pseudo_per_class"].values()))
        priors = summary["rounds"][0]["pool_priors"]  # EM estimate of the pool's class mix
        assert set(priors) == set(MER_CLASSES) and abs(sum(priors.values()) - 1) < 1e-3
    n_loose = sum(loose["rounds"][1]["pseudo_per_class"].values())
    n_strict = sum(strict["rounds"][1]["pseudo_per_class"].values())
    assert 0 < n_strict < n_loose
