"""The final model (``mer fuse train -T final=true``): after the folds, one model is trained on every
labelled clip for the median of the folds' epoch counts, saved as ``final.pt``, and ``mer fuse
predict`` uses it instead of averaging the fold models (``--models`` chooses). A small synthetic
store on disk (3 classes, 12 speakers), the real ``concat`` model, one torch thread."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import mer_cli, one_thread_env, one_torch_thread
from mer.fusion.config import TrainConfig
from mer.fusion.data import load_features
from mer.fusion.models import build_model
from mer.fusion.normalize import load_normalizer
from mer.fusion.predict import predict_corrected, predict_run, run_models
from mer.fusion.run import FINAL_CHECKPOINT, train_run
from mer.fusion.train import predict_probs, train_final
from mer.store import FeatureStore, Provenance

CLASSES = ["angry", "happy", "sad"]
KEYS = ["audio/syn", "text/syn"]
N = 96


def synthetic(root: Path) -> tuple[Path, list[str], np.ndarray]:
    """Two utterance-level sets for ``N`` labelled clips (balanced, 12 speakers) and 12 unlabelled
    ones; labels.csv and clips.csv beside the store."""
    rng = np.random.default_rng(3)
    names = [f"clip{i:03d}" for i in range(N)] + [f"new{i:02d}" for i in range(12)]
    y = np.concatenate([rng.permutation(np.arange(N) % 3), np.arange(12) % 3])
    store = FeatureStore(root / "features.zarr")
    for key, dim in (("audio/syn", 8), ("text/syn", 6)):
        x = rng.normal(0, 1, (len(names), dim)) + rng.normal(0, 1, (3, dim))[y] * 0.8
        fs = store.create(key, level="utt", dim=dim, provenance=Provenance(extractor="synthetic", config={}),
                          dtype="float32")
        with fs.writer() as w:
            w.add_batch(names, x.astype(np.float32))
    (root / "labels.csv").write_text("name,discrete\n" + "".join(f"{names[i]},{CLASSES[y[i]]}\n" for i in range(N)))
    (root / "clips.csv").write_text("name,speaker\n" + "".join(f"{n},spk{i % 12:02d}\n" for i, n in enumerate(names)))
    return root / "features.zarr", names, y


def train(root: Path, out: Path, **kw) -> dict:
    cfg = TrainConfig(**{"epochs": 12, "patience": 4, "batch_size": 16, "seed": 0, **kw})
    with one_torch_thread():
        return train_run(root / "features.zarr", KEYS, root / "labels.csv", out, model="concat",
                         model_config={"hidden": 32}, train=cfg, folds=3, clips_csv=root / "clips.csv",
                         group_col="speaker", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("final")
    store, names, y = synthetic(root)
    metrics = train(root, root / "run", final=True)
    return {"root": root, "store": store, "names": names, "y": y, "metrics": metrics, "out": root / "run"}


def test_final_model_trains_on_every_labelled_clip_for_the_median_epochs(run):
    metrics, out = run["metrics"], run["out"]
    fold_epochs = [f["best_epoch"] + 1 for f in metrics["folds"]]
    final = metrics["final"]
    assert final["fold_epochs"] == fold_epochs
    assert final["epochs"] == int(round(float(np.median(fold_epochs)))) and final["n_train"] == N
    state = torch.load(out / FINAL_CHECKPOINT, weights_only=True)
    assert state["final"] is True and state["epochs"] == final["epochs"] and state["n_train"] == N
    # its normaliser was fitted on every labelled clip, not on one fold's training side
    data = load_features(FeatureStore(run["store"], mode="r"), KEYS, run["names"][:N])
    for key in KEYS:
        np.testing.assert_allclose(state["norm"]["mean"][key], data.feats[key].mean(0), rtol=1e-5, atol=1e-6)
    # the same call trains the same weights (the run's seed after the fold seeds)
    cfg = TrainConfig(epochs=12, patience=4, batch_size=16, seed=0)
    with one_torch_thread():
        again = train_final(lambda: build_model("concat", {"hidden": 32}, data.dims, data.utt, 3), data,
                            run["y"][:N], np.arange(N), 3, cfg, final["epochs"], seed=cfg.seed + 3)
    assert all(torch.equal(again.state_dict[k], state["state_dict"][k]) for k in state["state_dict"])
    with pytest.raises(ValueError, match="at least one epoch"):
        train_final(lambda: None, data, run["y"][:N], np.arange(N), 3, cfg, 0, seed=0)


def test_predict_uses_the_final_model_and_folds_on_request(run):
    new = [n for n in run["names"] if n.startswith("new")]
    got, auto, classes = predict_run(run["out"], run["store"], new)
    _, final, _ = predict_run(run["out"], run["store"], new, use="final")
    _, folds, _ = predict_run(run["out"], run["store"], new, use="folds")
    assert got == new and classes == CLASSES
    np.testing.assert_array_equal(auto, final)
    assert np.abs(auto - folds).max() > 1e-3  # one model, not the average of three
    # exactly the saved final model applied to these clips
    data = load_features(FeatureStore(run["store"], mode="r"), KEYS, new)
    state = torch.load(run["out"] / FINAL_CHECKPOINT, weights_only=True)
    model = build_model("concat", {"hidden": 32}, data.dims, data.utt, 3)
    model.load_state_dict(state["state_dict"])
    np.testing.assert_allclose(auto, predict_probs(model, data, np.arange(len(new)), load_normalizer(state["norm"], data)),
                               rtol=1e-6, atol=1e-7)
    # prior correction describes the final model by the folds' pooled out-of-fold predictions
    _, fix = predict_corrected(run["out"], run["store"], new, "em")
    assert fix.details["per_fold"] is False and fix.probs.shape == (12, 3)
    _, fix_folds = predict_corrected(run["out"], run["store"], new, "em", use="folds")
    assert fix_folds.details["per_fold"] is True


def test_a_rerun_without_final_drops_the_old_final_model(run, tmp_path):
    out = tmp_path / "run"
    with one_torch_thread():  # an earlier run with more folds in the same folder
        train_run(run["root"] / "features.zarr", KEYS, run["root"] / "labels.csv", out, model="concat",
                  model_config={"hidden": 8}, train=TrainConfig(epochs=1, batch_size=16), folds=4, progress=False)
    assert (out / "fold3.pt").is_file()
    train(run["root"], out, final=True, epochs=3)
    assert (out / FINAL_CHECKPOINT).is_file() and not (out / "fold3.pt").exists()  # 3 folds now
    metrics = train(run["root"], out, epochs=3)
    assert "final" not in metrics and not (out / FINAL_CHECKPOINT).exists()
    config = {"train": {"final": False}}
    assert [p.name for p in run_models(out, config)] == ["fold0.pt", "fold1.pt", "fold2.pt"]
    with pytest.raises(FileNotFoundError, match="final=true"):
        run_models(out, config, "final")
    with pytest.raises(ValueError, match="auto, final, folds"):
        run_models(out, config, "best")


def test_cli_trains_and_predicts_with_the_final_model(run, tmp_path):
    root = run["root"]
    res = subprocess.run([*mer_cli(), "fuse", "train", "--store", str(run["store"]), "--features", ",".join(KEYS),
                          "--labels", str(root / "labels.csv"), "--out", str(tmp_path / "run"), "--model", "concat",
                          "--folds", "3", "-O", "hidden=16", "-T", "epochs=3", "-T", "final=true"],
                         capture_output=True, text=True, env=one_thread_env())
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / FINAL_CHECKPOINT).is_file()
    rows = {}
    for models in ("auto", "folds"):
        res = subprocess.run([*mer_cli(), "fuse", "predict", "--run", str(tmp_path / "run"), "--store",
                              str(run["store"]), "--out", str(tmp_path / f"{models}.csv"), "--models", models],
                             capture_output=True, text=True, env=one_thread_env())
        assert res.returncode == 0, res.stderr
        rows[models] = (tmp_path / f"{models}_probs.csv").read_text().splitlines()
    assert len(rows["auto"]) == len(run["names"]) + 1 and rows["auto"] != rows["folds"]


def test_selftrain_rounds_from_a_final_run_use_their_fold_models(run, tmp_path):
    """Self-training rounds train per-fold pseudo-labels, so they record ``final: false`` and have no
    final model; the base run keeps its own."""
    from mer.fusion.selftrain import SelfTrainConfig, run_selftrain

    root = run["root"]
    base = tmp_path / "base"
    train(root, base, final=True, epochs=4)
    pool = [n for n in run["names"] if n.startswith("new")]
    with one_torch_thread():
        summary = run_selftrain(base, run["store"], pool, tmp_path / "st", SelfTrainConfig(rounds=1, threshold=0.0),
                                labels_csv=root / "labels.csv", progress=False)
    round1 = tmp_path / "st" / "round1"
    assert len(summary["rounds"]) == 2 and not (round1 / FINAL_CHECKPOINT).exists()
    config = json.loads((round1 / "config.json").read_text())
    assert config["train"]["final"] is False
    assert [p.name for p in run_models(round1, config)] == ["fold0.pt", "fold1.pt", "fold2.pt"]
    assert (base / FINAL_CHECKPOINT).is_file()
