"""``mer fuse predict``: a run's models over stored features.

A run predicts with its final model (trained on every labelled clip, ``-T final=true``) when it
has one, else with the average of its fold models (``--models`` chooses).

The store must hold the run's feature sets with the same level, dim and provenance identity
(extractor, config, model, weights hash, decode settings); anything else is refused with a list
of the differences, because a model trained on one feature space is meaningless on another. A run
normalised per group (:mod:`mer.fusion.normalize`) needs the clip table with its group column: each
group's statistics come from its own clips being predicted.
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

from .config import upgrade_run_config
from .data import FusionData, load_features
from .models import build_model
from .normalize import load_normalizer, norm_spec
from .priors import OutOfFold, PriorCorrection, correct, parse_priors, read_oof
from .run import FINAL_CHECKPOINT, clip_groups, set_identity
from .train import predict_probs

log = logging.getLogger(__name__)


class RunMismatchError(StoreError):
    """The store's feature sets differ from those the run was trained on."""


def resolve_run(run_dir: Path) -> Path:
    """The run directory to use: a self-training folder resolves to its best round."""
    run_dir = Path(run_dir)
    st = run_dir / "selftrain.json"
    if st.is_file() and not (run_dir / "config.json").is_file():
        best = json.loads(st.read_text())["best_dir"]
        best_path = Path(best) if Path(best).is_absolute() else run_dir / best
        log.info("%s is a self-training run: using its best round, %s", run_dir, best_path)
        return best_path
    return run_dir


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run's config.json, with a clear error when the folder is not a run."""
    path = resolve_run(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a training run (no config.json); train one with `mer fuse train`")
    return upgrade_run_config(json.loads(path.read_text()))  # old runs: fields they predate get legacy values


def fold_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``fold<k>.pt`` files in fold order (``fold10.pt`` after ``fold9.pt``)."""
    return sorted(Path(run_dir).glob("fold*.pt"), key=lambda p: int(p.stem[4:]))


def saved_folds(run_dir: Path) -> list[tuple[int, list[str]]]:
    """``(fold index, validation clip names)`` of each fold checkpoint of a run, in fold order."""
    out = []
    for ckpt in fold_checkpoints(run_dir):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        out.append((int(state["fold"]), [str(n) for n in state.get("val_names", [])]))
    return out


def run_oof(run_dir: Path) -> OutOfFold:
    """The run's out-of-fold predictions (for prior correction: training priors, calibration, BBSE)."""
    run_dir = resolve_run(run_dir)
    config = load_run(run_dir)
    path = run_dir / "oof_predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no oof_predictions.csv; prior correction needs it")
    oof = read_oof(path, config["classes"], bool(config["train"].get("class_weights", False)))
    position = {n: i for i, n in enumerate(oof.names)}
    fold = np.full(len(oof.names), -1, dtype=np.int64)
    for k, val_names in saved_folds(run_dir):
        for name in val_names:
            if name in position:
                fold[position[name]] = k
    if (fold >= 0).all():
        oof.fold = fold
    return oof


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


MODEL_CHOICES = ("auto", "final", "folds")


def run_models(run_dir: Path, config: dict[str, Any], use: str = "auto") -> list[Path]:
    """The checkpoints that predict: ``final.pt`` or the ``fold<k>.pt`` files.

    ``use``: ``"auto"`` is the final model when the run trained one (``-T final=true``), else the
    folds; ``"final"`` refuses a run without one; ``"folds"`` is always the fold ensemble.
    """
    if use not in MODEL_CHOICES:
        raise ValueError(f"models must be one of {', '.join(MODEL_CHOICES)}, got {use!r}")
    final = Path(run_dir) / FINAL_CHECKPOINT
    has_final = bool(config["train"].get("final")) and final.is_file()
    if use == "final" and not has_final:
        raise FileNotFoundError(f"{run_dir} has no final model (train with -T final=true to get {FINAL_CHECKPOINT})")
    if use != "folds" and has_final:
        return [final]
    checkpoints = fold_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir} holds no fold checkpoints (fold*.pt)")
    return checkpoints


def predict_folds(run_dir: Path, config: dict[str, Any], data: FusionData, rows: np.ndarray,
                  device: str = "cpu", use: str = "folds") -> np.ndarray:
    """The run's models on ``rows`` of ``data`` (loaded for the run's sets): ``[K, len(rows), C]``.

    ``use`` (:func:`run_models`): ``"folds"`` (K fold models), ``"final"`` or ``"auto"`` (K = 1
    when the final model is used).
    """
    checkpoints = run_models(run_dir, config, use)
    out = []
    for ckpt in checkpoints:
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model = build_model(config["model"], config["model_config"], data.dims, data.utt, len(config["classes"]))
        model.load_state_dict(state["state_dict"])
        model.to(device)
        out.append(predict_probs(model, data, rows, load_normalizer(state["norm"], data), device))
    return np.stack(out).astype(np.float32)


def group_column(config: dict[str, Any], clips_csv: Path | None, run_dir: Path | str = "the run") -> str | None:
    """The run's group column when it normalises per group (``None`` otherwise); refuses a missing ``--clips``."""
    spec = norm_spec(config["train"])
    if spec.mode != "group":
        return None
    if clips_csv is None:
        raise ValueError(f"{run_dir} normalises features per {spec.col!r} group: pass --clips, a clip table with a "
                         f"{spec.col!r} column for the clips to predict (each group's statistics come from its "
                         f"own clips; groups under {spec.min_group} clips use the run's global statistics)")
    return spec.col


def attach_groups(config: dict[str, Any], data: FusionData, clips_csv: Path | None,
                  run_dir: Path | str = "the run") -> None:
    """Set ``data.groups`` from the clip table when the run normalises per group (else nothing).

    The groups' statistics then come from ``data``'s own clips (transductive: a new speaker is
    normalised with its own unlabelled clips). Refuses a missing ``--clips``, column or clip.
    """
    col = group_column(config, clips_csv, run_dir)
    if col is not None:
        data.groups = clip_groups(clips_csv, col, data.names)


def fold_probs(run_dir: Path, store_path: Path, names: list[str] | None = None, device: str = "cpu", *,
               clips_csv: Path | None = None, use: str = "folds") -> tuple[list[str], np.ndarray, list[str]]:
    """Each model's probabilities; returns (names, probs ``[K, N, C]``, classes).

    ``clips_csv``: the clip table holding the run's group column (runs normalised per group).
    ``use``: which models (:func:`run_models`; the default is the K fold models).
    """
    run_dir = resolve_run(run_dir)
    config = load_run(run_dir)
    group_column(config, clips_csv, run_dir)  # refused before reading features
    store = FeatureStore(store_path, mode="r")
    check_store_matches(config, store)
    data = load_features(store, config["features"], names, config["train"]["max_frames"])
    attach_groups(config, data, clips_csv, run_dir)
    return data.names, predict_folds(run_dir, config, data, np.arange(len(data)), device, use), config["classes"]


def predict_run(run_dir: Path, store_path: Path, names: list[str] | None = None, device: str = "cpu", *,
                clips_csv: Path | None = None, use: str = "auto") -> tuple[list[str], np.ndarray, list[str]]:
    """The run's prediction: its final model when it has one, else the fold models' average.

    Returns (names, probs ``[N, C]``, classes). ``use``: ``auto``, ``final`` or ``folds``
    (:func:`run_models`).
    """
    got, probs, classes = fold_probs(run_dir, store_path, names, device, clips_csv=clips_csv, use=use)
    return got, probs.mean(0), classes


def predict_corrected(run_dir: Path, store_path: Path, names: list[str] | None = None, method: str = "none",
                      priors: str | None = None, device: str = "cpu", *,
                      clips_csv: Path | None = None, use: str = "auto") -> tuple[list[str], PriorCorrection]:
    """The run's prediction (:func:`predict_run`), then label-shift correction (:mod:`mer.fusion.priors`).

    The priors are estimated from the predictions on ``names`` themselves (``em``, ``bbse``) or taken
    from ``priors`` (``given``, ``"class=value,..."``). ``clips_csv``: the clip table holding the
    run's group column (runs normalised per group). With the fold models each fold is described by
    its own validation predictions; a final model has no held-out clips of its own, so the pooled
    out-of-fold predictions of the folds stand in for it.
    """
    if priors and method != "given":
        raise ValueError("--priors goes with --prior-correction given")
    run_dir = resolve_run(run_dir)
    use_final = run_models(run_dir, load_run(run_dir), use)[0].name == FINAL_CHECKPOINT
    got, per_fold, classes = fold_probs(run_dir, store_path, names, device, clips_csv=clips_csv,
                                        use="final" if use_final else "folds")
    oof = run_oof(run_dir)
    given = parse_priors(priors, classes) if method == "given" else None
    return got, correct(per_fold.mean(0), method, oof, given, fold_probs=None if use_final else per_fold)


def write_predictions(path: Path, names: list[str], probs: np.ndarray | None, classes: list[str],
                      discrete: list[str] | None = None) -> tuple[Path, Path | None]:
    """MER submission format ``name,discrete`` at ``path`` and probabilities beside it.

    ``discrete`` overrides the argmax of ``probs`` (e.g. majority votes); with ``probs`` ``None``
    only the submission file is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if discrete is None:
        if probs is None:
            raise ValueError("write_predictions needs probs or discrete")
        discrete = [classes[int(p.argmax())] for p in probs]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "discrete"])
        w.writerows(zip(names, discrete))
    if probs is None:
        return path, None
    prob_path = path.with_name(path.stem + "_probs.csv")
    with open(prob_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *classes])
        for n, p in zip(names, probs):
            w.writerow([n, *[f"{x:.6f}" for x in p]])
    return path, prob_path
