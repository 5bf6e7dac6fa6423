"""``mer fuse predict``: the fold models of a run as an ensemble over stored features.

The store must hold the run's feature sets with the same level, dim and provenance identity
(extractor, config, model, weights hash, decode settings); anything else is refused with a list
of the differences, because a model trained on one feature space is meaningless on another.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mer.store import FeatureStore, StoreError
from mer.store.provenance import identity_differences

from .data import Standardizer, load_features
from .models import build_model
from .run import set_identity
from .train import predict_probs

log = logging.getLogger(__name__)


class RunMismatchError(StoreError):
    """The store's feature sets differ from those the run was trained on."""


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, with a clear error when the folder is not a run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json); train one with `mer fuse train`")
    return json.loads(path.read_text())


def check_store_matches(config: dict[str, Any], store: FeatureStore) -> None:
    """Refuse a store whose sets, dims or provenance differ from the run's."""
    problems = []
    for key, want in config["sets"].items():
        if key not in store:
            problems.append(f"  {key}: missing from the store (sets: {', '.join(store.sets()) or 'none'})")
            continue
        have = set_identity(store, key)
        if have["level"] != want["level"] or have["dim"] != want["dim"]:
            problems.append(f"  {key}: level/dim {have['level']}/{have['dim']} but the run was trained on "
                            f"{want['level']}/{want['dim']}")
        for field, (old, new) in identity_differences(want["provenance"], have["provenance"]).items():
            problems.append(f"  {key}: {field}: run={old!r} store={new!r}")
    if problems:
        raise RunMismatchError("the store's feature sets differ from those the run was trained on:\n"
                               + "\n".join(problems))


def predict_run(run_dir: Path, store_path: Path, names: list[str] | None = None,
                device: str = "cpu") -> tuple[list[str], np.ndarray, list[str]]:
    """Average the fold models' probabilities; returns (names, probs ``[N, C]``, classes)."""
    run_dir = Path(run_dir)
    config = load_run(run_dir)
    store = FeatureStore(store_path, mode="r")
    check_store_matches(config, store)
    data = load_features(store, config["features"], names, config["train"]["max_frames"])
    classes = config["classes"]
    checkpoints = sorted(run_dir.glob("fold*.pt"))
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} holds no fold checkpoints (fold*.pt)")
    rows = np.arange(len(data))
    total = np.zeros((len(data), len(classes)), dtype=np.float64)
    for ckpt in checkpoints:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model = build_model(config["model"], config["model_config"], data.dims, data.utt, len(classes))
        model.load_state_dict(state["state_dict"])
        model.to(device)
        total += predict_probs(model, data, rows, Standardizer.from_state(state["norm"]), device)
    return data.names, (total / len(checkpoints)).astype(np.float32), classes


def write_predictions(path: Path, names: list[str], probs: np.ndarray, classes: list[str]) -> tuple[Path, Path]:
    """MER submission format ``name,discrete`` at ``path`` and probabilities beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "discrete"])
        for n, p in zip(names, probs):
            w.writerow([n, classes[int(p.argmax())]])
    prob_path = path.with_name(path.stem + "_probs.csv")
    with open(prob_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *classes])
        for n, p in zip(names, probs):
            w.writerow([n, *[f"{x:.6f}" for x in p]])
    return path, prob_path
