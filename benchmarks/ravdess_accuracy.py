"""Accuracy of every fusion model on real RAVDESS features (speaker-independent).

Features (extracted once into ``--work``/features.zarr through the real stages): Whisper-base
encoder (``audio/whisper-base``), OpenFace action units (``video/openface-au``), MiniLM on the
spoken sentence (``text/minilm``; RAVDESS has two fixed sentences, so text carries almost no
emotion). Two protocols:
  holdout: train on actors 1-16 (5 folds grouped by actor, for early stopping and the ensemble),
           predict actors 17-20 with the fold ensemble;
  cv5:     5-fold cross-validation grouped by actor over all 20 actors (mean over folds).

    python benchmarks/ravdess_accuracy.py --data ../shared/data/ravdess --work bench-out/ravdess
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess --seeds 0,1,2   # mean over 3 training seeds
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess --audio-frames --only agt,concat   # audio frames

Prints a table (accuracy and WAF per model and protocol) and, last, ``agt_holdout_waf: X``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np

from mer.fusion.config import TrainConfig
from mer.fusion.eval import evaluate_predictions
from mer.fusion.predict import predict_run, write_predictions
from mer.fusion.run import train_run
from mer.pipeline.clips import labels_from_table, scan_dataset
from mer.pipeline.demo import demo_stages
from mer.pipeline.stage import StageSpec, run_stage
from mer.store.tables import write_clip_table

A, V, T = "audio/whisper-base", "video/openface-au", "text/minilm"
AF = "audio/whisper-frames"  # the same encoder, 20 ms frames (--audio-frames)


def runs_for(audio: str) -> list[tuple[str, list[str]]]:
    """The models and their feature sets, with ``audio`` as the audio set."""
    return [("single", [audio]), ("single", [V]), ("single", [T]), ("concat", [audio, V, T]),
            ("attention", [audio, V, T]), ("agt", [audio, V, T])]


RUNS = runs_for(A)


def modalities(feats: list[str]) -> str:
    """``audio+video+text``: the modalities of a model's feature sets, as the table shows them."""
    return "+".join(k.split("/")[0] for k in feats)


def add_audio_frames(clips: Path, store: Path, whisper_seconds: float) -> None:
    """Whisper-base frame-level features next to the utterance set (resumes like the others)."""
    spec = StageSpec(modality="audio", extractor="whisper-ct2", key=AF, clips=clips, store=store,
                     config={"model": "whisper-base", "input_seconds": whisper_seconds, "batch_size": 4,
                             "level": "frame"})
    report = run_stage(spec, progress=False)
    logging.info("%s: %d done, %d skipped, %d failed", AF, report.done, report.skipped, len(report.failed))


def prepare(data: Path, work: Path, whisper_seconds: float) -> tuple[Path, Path, Path]:
    """Clip table, labels and the three feature sets (resumes: done clips are skipped)."""
    work.mkdir(parents=True, exist_ok=True)
    table = scan_dataset(data)
    clips = write_clip_table(table, work / "clips.csv")
    labels = labels_from_table(table, "emotion", work / "labels.csv")
    for spec in demo_stages(data, clips, work / "features.zarr", whisper_seconds):
        report = run_stage(spec, progress=False)
        logging.info("%s: %d done, %d skipped, %d failed", spec.key, report.done, report.skipped, len(report.failed))
    return clips, labels, work / "features.zarr"


def split_labels(clips: Path, labels: Path, work: Path) -> tuple[Path, Path]:
    """Labels of actors 1-16 (train) and 17-20 (test)."""
    with open(clips) as f:
        actor = {r["name"]: int(r["actor"]) for r in csv.DictReader(f)}
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    paths = []
    for part, keep in (("train", lambda a: a <= 16), ("test", lambda a: a > 16)):
        p = work / f"labels-{part}.csv"
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "discrete"])
            w.writerows((r["name"], r["discrete"]) for r in rows if keep(actor[r["name"]]))
        paths.append(p)
    return paths[0], paths[1]


def run_model(model: str, feats: list[str], store: Path, clips: Path, labels: Path, train_labels: Path,
              test_labels: Path, runs: Path, cfg: TrainConfig) -> dict:
    """Holdout (actors 17-20) and 5-fold CV figures of one model with one seed."""
    tag = f"{model}-" + "+".join(k.split("/")[0] + ("-frames" if k == AF else "") for k in feats)
    hold = train_run(store, feats, train_labels, runs / f"holdout-{tag}", model=model, train=cfg,
                     folds=5, clips_csv=clips, group_col="speaker", progress=False)
    with open(test_labels, newline="") as f:
        names = [r["name"] for r in csv.DictReader(f)]
    got, probs, classes = predict_run(runs / f"holdout-{tag}", store, names)
    pred, _ = write_predictions(runs / f"holdout-{tag}" / "test_predictions.csv", got, probs, classes)
    test = evaluate_predictions(pred, test_labels)
    cv = train_run(store, feats, labels, runs / f"cv5-{tag}", model=model, train=cfg, folds=5,
                   clips_csv=clips, group_col="speaker", progress=False)
    return {"model": model, "features": modalities(feats), "seed": cfg.seed,
            "holdout_acc": test["accuracy"], "holdout_waf": test["waf"],
            "cv5_acc": cv["summary"]["accuracy"]["mean"], "cv5_waf": cv["summary"]["waf"]["mean"],
            "cv5_waf_std": cv["summary"]["waf"]["std"], "holdout_train_cv_waf": hold["summary"]["waf"]["mean"]}


def print_table(rows: list[dict], seeds: list[int], runs_list: list[tuple[str, list[str]]]) -> None:
    """One row per model: the mean over seeds (± std over seeds for the holdout, over folds for CV)."""
    print(f"seeds: {', '.join(map(str, seeds))}")
    print("| model | features | holdout acc | holdout WAF | 5-fold acc | 5-fold WAF |")
    print("|---|---|---|---|---|---|")
    for model, feats in runs_list:
        mine = [r for r in rows if r["model"] == model and r["features"] == modalities(feats)]
        if not mine:
            continue
        m = {k: float(np.mean([r[k] for r in mine])) for k in ("holdout_acc", "holdout_waf", "cv5_acc", "cv5_waf")}
        hold_sd = f" ± {np.std([r['holdout_waf'] for r in mine]):.3f}" if len(mine) > 1 else ""
        cv_sd = float(np.mean([r["cv5_waf_std"] for r in mine]))
        print(f"| {model} | {mine[0]['features']} | {m['holdout_acc']:.3f} | {m['holdout_waf']:.3f}{hold_sd} | "
              f"{m['cv5_acc']:.3f} | {m['cv5_waf']:.3f} ± {cv_sd:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ravdess"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/ravdess"))
    ap.add_argument("--whisper-seconds", type=float, default=0.0, help="0: trimmed input; 30: native padding")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--only", default="", help="comma-separated model names to run (default all)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds; the table is the mean over them")
    ap.add_argument("--audio-frames", action="store_true",
                    help="audio as Whisper frames (20 ms) instead of the utterance mean: the AGT attends over them, "
                         "the baselines mean-pool them")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    clips, labels, store = prepare(args.data, args.work, args.whisper_seconds)
    train_labels, test_labels = split_labels(clips, labels, args.work)
    runs_list = RUNS
    if args.audio_frames:
        add_audio_frames(clips, store, args.whisper_seconds)
        runs_list = runs_for(AF)
    seeds = [int(x) for x in args.seeds.split(",")]
    wanted = set(args.only.split(",")) if args.only else None
    rows = []
    for seed in seeds:
        runs = args.work / "runs" if seed == 0 else args.work / f"runs-seed{seed}"
        for model, feats in runs_list:
            if wanted and model not in wanted:
                continue
            rows.append(run_model(model, feats, store, clips, labels, train_labels, test_labels, runs,
                                  TrainConfig(epochs=args.epochs, seed=seed)))
            print(json.dumps(rows[-1]), flush=True)
    print_table(rows, seeds, runs_list)
    agt = [r["holdout_waf"] for r in rows if r["model"] == "agt"]
    if agt:
        print(f"agt_holdout_waf: {np.mean(agt):.3f}")


if __name__ == "__main__":
    main()
