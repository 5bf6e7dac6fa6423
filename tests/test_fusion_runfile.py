"""Run files and presets (`mer fuse train --config FILE --preset NAME`, `mer fuse presets`).

A small synthetic store (two utterance-level sets, 3 classes, 6 speakers): run files load into
the config dataclasses and refuse unknown keys naming the key and the file; precedence is preset
< run file < command line; a finished run's config.json and run.yaml replay it to the same
metrics.json (CPU); the presets are listed and valid.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import mer_cli, one_thread_env, one_torch_thread, write_csv
from mer.fusion.config import AGTConfig, TrainConfig
from mer.fusion.presets import PRESETS, preset_rows
from mer.fusion.runfile import read_run_file, resolve_run_spec, train_from_options
from mer.store import FeatureStore, Provenance

CLASSES = ["angry", "happy", "sad"]
AUDIO, VIDEO = "audio/syn", "video/syn"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """36 clips (6 speakers x 3 classes x 2), audio carries the class, video is weaker."""
    root = tmp_path_factory.mktemp("runfile")
    rng = np.random.default_rng(3)
    mu = rng.standard_normal((3, 8))
    names, labels, speakers = [], [], []
    for s in range(6):
        for c, cls in enumerate(CLASSES):
            for i in range(2):
                names.append(f"s{s}_{cls}_{i}")
                labels.append(cls)
                speakers.append(f"spk{s}")
    y = np.array([CLASSES.index(v) for v in labels])
    store = FeatureStore(root / "features.zarr")
    for key, dim, signal in ((AUDIO, 8, 1.5), (VIDEO, 6, 0.5)):
        fs = store.create(key, level="utt", dim=dim, dtype="float32",
                          provenance=Provenance(extractor="synthetic", config={"key": key}))
        x = signal * mu[y, :dim] + rng.standard_normal((len(names), dim))
        with fs.writer() as w:
            w.add_batch(names, x.astype(np.float32))
    write_csv(root / "labels.csv", [{"name": n, "discrete": v} for n, v in zip(names, labels)])
    write_csv(root / "clips.csv", [{"name": n, "speaker": s} for n, s in zip(names, speakers)])
    return {"root": root, "store": root / "features.zarr", "labels": root / "labels.csv",
            "clips": root / "clips.csv"}


def _yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# ------------------------------------------------------------------------------- loading, refusals


def test_run_file_loads_into_dataclasses_and_refuses_unknown_keys(data, tmp_path):
    f = _yaml(tmp_path / "run.yaml", {
        "store": str(data["store"]), "features": f"{AUDIO},{VIDEO}", "labels": str(data["labels"]),
        "out": str(tmp_path / "out"), "clips": str(data["clips"]), "group_col": "speaker", "folds": 3,
        "classes": "sad,happy,angry", "model": "agt", "model_config": {"width": 32, "fusion": "concat"},
        "train": {"epochs": 7, "seed": 4, "norm_col": "speaker", "select": "last"}})
    spec = resolve_run_spec(f)
    assert spec.features == [AUDIO, VIDEO] and spec.store == data["store"] and spec.folds == 3
    assert spec.group_col == "speaker" and spec.classes == ["sad", "happy", "angry"]
    assert spec.model_config == {**AGTConfig().__dict__, "width": 32, "fusion": "concat"}
    # norm_col without normalize means group normalisation, as on the command line
    assert spec.train == TrainConfig(epochs=7, seed=4, norm_col="speaker", normalize="group", select="last")
    # JSON works too, and a run file may leave keys to the command line
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"model": "single", "model_config": {"hidden": 16}}))
    assert read_run_file(j) == {"model": "single", "model_config": {"hidden": 16}}

    for bad, key, where in (({"epochs": 3}, "'epochs'", "run file keys"),
                            ({"train": {"epoch": 3}}, "'epoch'", "TrainConfig fields"),
                            ({"model": "agt", "model_config": {"widht": 3}}, "'widht'", "AGTConfig fields")):
        path = _yaml(tmp_path / "bad.yaml", bad)
        with pytest.raises(ValueError) as err:
            read_run_file(path)
        assert key in str(err.value) and str(path) in str(err.value) and where in str(err.value)
    # a model_config field the (command-line) model lacks names where it came from
    path = _yaml(tmp_path / "bad.yaml", {"model_config": {"width": 32}})
    with pytest.raises(ValueError, match=r"'width'.*set by run file"):
        resolve_run_spec(path, options={"model": "single", "store": "s", "features": "a", "labels": "l",
                                        "out": "o"})
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping of keys"):
        read_run_file(tmp_path / "list.yaml")
    with pytest.raises(ValueError, match=r"not set: store \(--store\), features \(--features\)"):
        resolve_run_spec(j)


def test_precedence_preset_then_file_then_command_line(data, tmp_path):
    f = _yaml(tmp_path / "run.yaml", {
        "store": str(data["store"]), "features": [AUDIO], "labels": str(data["labels"]), "out": "from-file",
        "preset": "agt-frames", "model_config": {"width": 32, "heads": 2}, "train": {"epochs": 5, "lr": 0.01}})
    cli = {"out": "from-cli", "model_config": {"heads": 1}, "train": {"epochs": 3}}
    spec = resolve_run_spec(f, "agt-small", cli)  # --preset replaces the file's preset
    small = PRESETS["agt-small"]
    assert spec.model == "agt" and spec.out == Path("from-cli")
    assert spec.model_config["width"] == 32  # file over preset (64)
    assert spec.model_config["heads"] == 1  # command line over file (2) and preset (2)
    assert spec.model_config["utt_tokens"] == small.model_config["utt_tokens"] == 1  # preset only
    assert spec.model_config["align_window"] == AGTConfig().align_window  # not agt-frames' 0.5
    assert spec.train.epochs == 3 and spec.train.lr == 0.01  # command line, file
    assert spec.train.patience == small.train["patience"] == 8  # preset
    assert spec.train.batch_size == TrainConfig().batch_size  # dataclass default
    # without --preset the file's preset applies
    spec = resolve_run_spec(f)
    assert spec.model_config["align_window"] == 0.5 and spec.model_config["width"] == 32
    assert spec.train.max_frames == 256 and spec.out == Path("from-file")
    with pytest.raises(ValueError, match="preset agt-small is for model 'agt'"):
        resolve_run_spec(f, "agt-small", {"model": "concat"})
    with pytest.raises(ValueError, match="unknown preset 'agt-huge'"):
        resolve_run_spec(f, "agt-huge")


# ------------------------------------------------------------------------------------- replay


def test_saved_config_replays_the_run_exactly(data, tmp_path):
    first = tmp_path / "first"
    f = _yaml(tmp_path / "run.yaml", {
        "store": str(data["store"]), "features": [AUDIO, VIDEO], "labels": str(data["labels"]),
        "clips": str(data["clips"]), "group_col": "speaker", "folds": 3, "out": str(first),
        "model_config": {"width": 16, "heads": 2}, "train": {"epochs": 3, "batch_size": 16, "seed": 5}})
    with one_torch_thread():
        spec, metrics = train_from_options(f, "agt-small", {}, progress=False)
    assert spec.model_config["width"] == 16 and spec.model_config["utt_tokens"] == 1
    saved = yaml.safe_load((first / "run.yaml").read_text())
    assert saved["store"] == str(data["store"].resolve()) and saved["out"] == str(first.resolve())
    assert saved["model_config"] == spec.model_config and saved["train"]["epochs"] == 3
    assert saved["classes"] == CLASSES and saved["resolved"] is True

    def same(a: dict, b: dict) -> None:
        a, b = dict(a), dict(b)
        assert a.pop("train_seconds") > 0 and b.pop("train_seconds") > 0  # wall time: the only difference
        assert a == b

    # config.json through the command line, run.yaml through the library (one process start less)
    res = subprocess.run([*mer_cli(), "fuse", "train", "--config", str(first / "config.json"), "--out",
                          str(tmp_path / "replay0")], capture_output=True, text=True, env=one_thread_env())
    assert res.returncode == 0, res.stderr
    with one_torch_thread():
        train_from_options(first / "run.yaml", None, {"out": tmp_path / "replay1"}, progress=False)
    for out in (tmp_path / "replay0", tmp_path / "replay1"):
        same(metrics, json.loads((out / "metrics.json").read_text()))
        assert (out / "oof_predictions.csv").read_text() == (first / "oof_predictions.csv").read_text()
    assert json.loads((first / "metrics.json").read_text())["oof"] == metrics["oof"]
    # the saved run.yaml names its own folder: replaying it there without --out is refused
    with pytest.raises(ValueError, match="would write over the run it comes from"):
        resolve_run_spec(first / "run.yaml")
    # config.json names no run directory
    with pytest.raises(ValueError, match="pass --out"):
        resolve_run_spec(first / "config.json")
    # the command line overrides the replayed file: a different seed gives another run
    spec = resolve_run_spec(first / "config.json", options={"out": "x", "train": {"seed": 6}})
    assert spec.train.seed == 6 and spec.model_config == saved["model_config"]


def test_presets_listed_and_valid():
    rows = preset_rows()  # checks every preset against its dataclasses
    assert [r["name"] for r in rows] == list(PRESETS) and {"agt-small", "agt-paper", "agt-frames"} <= set(PRESETS)
    res = subprocess.run([*mer_cli(), "fuse", "presets", "--json"], capture_output=True, text=True,
                         env=one_thread_env())
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == rows
    res = subprocess.run([*mer_cli(), "fuse", "presets"], capture_output=True, text=True, env=one_thread_env())
    assert "agt-frames  (model agt)" in res.stdout and "-O align_window=0.5" in res.stdout
