"""Weighted late fusion (`mer fuse vote --method weighted --runs A --runs B`).

Two real `single` runs on the same labelled clips, one on an informative set and one on pure
noise: weights fitted on their out-of-fold predictions give the noise run about nothing, sum to 1
and are optimal for the out-of-fold log-loss; applied to the runs' test predictions they give the
weighted mean of the probabilities; runs that do not share clips, labels or classes are refused.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import mer_cli, one_thread_env, one_torch_thread, write_csv
from mer.fusion.config import TrainConfig
from mer.fusion.predict import predict_run, write_predictions
from mer.fusion.run import train_run
from mer.fusion.weighting import fit_weights, mixture_log_loss, oof_weights, weighted_vote
from mer.store import FeatureStore, Provenance

CLASSES = ["angry", "happy", "neutral", "sad"]
INFO, NOISE = "audio/informative", "audio/noise"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Store with an informative and a pure-noise set; a `single` run on each; their test predictions."""
    root = tmp_path_factory.mktemp("weighted")
    rng = np.random.default_rng(11)
    mu = rng.standard_normal((4, 8)) * 1.5
    labelled = [(f"c{i:03d}", CLASSES[i % 4]) for i in range(72)]
    test = [f"t{i:03d}" for i in range(20)]
    y = np.array([CLASSES.index(c) for _, c in labelled] + [i % 4 for i in range(len(test))])
    names = [n for n, _ in labelled] + test
    store = FeatureStore(root / "features.zarr")
    for key, x in ((INFO, mu[y] + rng.standard_normal((len(names), 8))),
                   (NOISE, rng.standard_normal((len(names), 8)))):
        fs = store.create(key, level="utt", dim=8, dtype="float32",
                          provenance=Provenance(extractor="synthetic", config={"key": key}))
        with fs.writer() as w:
            w.add_batch(names, x.astype(np.float32))
    labels = write_csv(root / "labels.csv", [{"name": n, "discrete": c} for n, c in labelled])
    out: dict[str, Path] = {"root": root, "labels": labels}
    cfg = TrainConfig(epochs=30, patience=30, batch_size=16, lr=3e-3, seed=1)
    with one_torch_thread():
        for tag, key in (("info", INFO), ("noise", NOISE)):
            run = root / f"run-{tag}"
            train_run(root / "features.zarr", [key], labels, run, model="single", model_config={"hidden": 32},
                      train=cfg, folds=3, progress=False)
            got, probs, classes = predict_run(run, root / "features.zarr", test)
            write_predictions(root / f"pred-{tag}.csv", got, probs, classes)
            out[tag] = run
    return out


def _probs_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:]], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def test_fit_weights_is_the_log_loss_optimum_on_the_simplex():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    onehot = np.eye(3)[y]
    good = 0.6 * onehot + 0.4 * rng.dirichlet(np.ones(3), 300)  # informative
    half = np.where(y[:, None] < 2, onehot * 0.7 + 0.1, 1 / 3)  # knows classes 0 and 1 only
    noise = rng.dirichlet(np.ones(3), 300)
    probs = np.stack([good, half, noise])
    w = fit_weights(probs, y)
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1, abs=1e-12)
    assert w[2] < 0.01  # noise gets nothing
    # no point of a 0.01 simplex grid does better
    grid = [np.array([a, b, 1 - a - b]) for a in np.arange(0, 1.001, 0.01) for b in np.arange(0, 1.001 - a, 0.01)]
    best = min(mixture_log_loss(g, probs, y) for g in grid)
    assert mixture_log_loss(w, probs, y) <= best + 1e-9


def test_noise_run_gets_no_weight(runs):
    report = oof_weights([runs["info"], runs["noise"]])
    w_info, w_noise = report["weights"]
    assert w_info + w_noise == pytest.approx(1, abs=1e-12) and min(report["weights"]) >= 0
    oof = report["oof"]
    assert w_noise < 0.05, report
    assert oof["runs"][0]["waf"] > 0.6 and oof["runs"][1]["waf"] < 0.45  # 4 classes: chance 0.25
    # the fitted mixture is at least as good (out-of-fold log-loss) as either run and as equal weights
    assert oof["weighted"]["log_loss"] <= min(oof["equal"]["log_loss"], *(r["log_loss"] for r in oof["runs"])) + 1e-9
    # measured: weights 1.0 / 0.0; out-of-fold WAF 0.82 (informative run), 0.23 (noise), 0.73 (equal weights)
    assert oof["weighted"]["waf"] > oof["equal"]["waf"] + 0.05
    assert report["n_oof_clips"] == 72 and report["classes"] == CLASSES


def test_weights_applied_to_test_predictions(runs):
    root = runs["root"]
    preds = [root / "pred-info.csv", root / "pred-noise.csv"]
    names, discrete, mixed, classes, report = weighted_vote(preds, [runs["info"], runs["noise"]],
                                                            root / "w_weights.json")
    saved = json.loads((root / "w_weights.json").read_text())
    assert saved == report and saved["predictions"] == [str(p) for p in preds]
    n_a, p_a = _probs_csv(root / "pred-info_probs.csv")
    n_b, p_b = _probs_csv(root / "pred-noise_probs.csv")
    assert names == n_a == n_b and classes == CLASSES
    w = report["weights"]
    np.testing.assert_allclose(mixed, w[0] * p_a + w[1] * p_b, atol=1e-12)
    assert discrete == [CLASSES[i] for i in mixed.argmax(1)]
    # the weights come from the runs alone: other test files (same clips) get the same weights
    _, _, _, _, again = weighted_vote(preds[::-1], [runs["info"], runs["noise"]][::-1])
    assert again["weights"] == pytest.approx(w[::-1], abs=1e-6)


def test_mismatched_runs_refused(runs, tmp_path):
    def copy(tag: str) -> Path:
        dst = tmp_path / tag
        shutil.copytree(runs["info"], dst, ignore=shutil.ignore_patterns("*.pt", "*.png"))
        return dst

    fewer = copy("fewer")  # a run that saw other labelled clips
    lines = (fewer / "oof_predictions.csv").read_text().splitlines()
    (fewer / "oof_predictions.csv").write_text("\n".join(lines[:-5]) + "\n")
    with pytest.raises(ValueError, match="different out-of-fold clips: 5 only in the first"):
        oof_weights([runs["info"], fewer])
    relabelled = copy("relabelled")  # same clips, another label
    row = lines[1].split(",")
    row[1] = next(c for c in CLASSES if c != row[1])
    (relabelled / "oof_predictions.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match="label the same clips differently"):
        oof_weights([runs["info"], relabelled])
    reordered = copy("reordered")  # the same classes in another order
    config = json.loads((reordered / "config.json").read_text())
    config["classes"] = CLASSES[::-1]
    (reordered / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="different class lists"):
        oof_weights([runs["info"], reordered])
    with pytest.raises(ValueError, match="at least two runs"):
        oof_weights([runs["info"]])
    preds = [runs["root"] / "pred-info.csv", runs["root"] / "pred-noise.csv"]
    with pytest.raises(ValueError, match="2 predictions files but 3 runs"):
        weighted_vote(preds, [runs["info"], runs["noise"], runs["info"]])


def test_cli_weighted_vote(runs):
    root = runs["root"]
    cmd = [*mer_cli(), "fuse", "vote", str(root / "pred-info.csv"), str(root / "pred-noise.csv"), "--out",
           str(root / "cli" / "voted.csv")]
    res = subprocess.run([*cmd, "--method", "weighted", "--runs", str(runs["info"]), "--runs", str(runs["noise"])],
                         capture_output=True, text=True, env=one_thread_env())
    assert res.returncode == 0, res.stderr
    report = json.loads((root / "cli" / "voted_weights.json").read_text())
    assert report["runs"] == [str(runs["info"]), str(runs["noise"])] and report["weights"][1] < 0.05
    names, probs = _probs_csv(root / "cli" / "voted_probs.csv")
    voted = (root / "cli" / "voted.csv").read_text().splitlines()
    assert voted[0] == "name,discrete" and [v.split(",")[1] for v in voted[1:]] == \
        [CLASSES[i] for i in probs.argmax(1)]
    res = subprocess.run([*cmd, "--method", "weighted"], capture_output=True, text=True, env=one_thread_env())
    assert res.returncode == 1 and "2 predictions files but 0 runs" in res.stderr and "Traceback" not in res.stderr
