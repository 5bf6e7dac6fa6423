"""MER2023 subtitles: supervised vs self-training vs self-training + label-shift correction, on test1.

Features: MiniLM (bundled all-MiniLM-L6-v2) on the English subtitles of every labelled clip and of
the pool (``-O empty=encode``). Model: the ``single`` MLP, 5 stratified folds on train-labels.
Pool: test2 + test3 names (1,246 clips, labels unknown). Test: test1 (411 clips), never used for
training, selection or stopping. Every figure is one command users can type; the equivalent
commands are printed.

    python benchmarks/mer2023_selftrain.py --data examples/mer2023 --work bench-out/mer2023-st

Prints test1 WAF for each variant, the estimated test1 priors against the true ones (L1), and last
``mer2023_selftrain_best_waf: X``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from mer.fusion.config import TrainConfig
from mer.fusion.eval import evaluate_predictions
from mer.fusion.predict import predict_corrected, write_predictions
from mer.fusion.run import train_run
from mer.fusion.selftrain import SelfTrainConfig, run_selftrain
from mer.pipeline.inputs import DecodeSettings
from mer.pipeline.stage import StageSpec, run_stage
from mer.store.tables import MER_CLASSES, read_labels, read_names

KEY = "text/minilm-english"


def test1_scores(run: Path, store: Path, data: Path, out: Path, truth: np.ndarray) -> dict[str, dict]:
    """test1 WAF without correction and with EM / BBSE; L1 of the estimated priors."""
    names = read_names(data / "test1-labels.csv")
    res = {}
    for method in ("none", "em", "bbse"):
        got, fix = predict_corrected(run, store, names, method)
        pred, _ = write_predictions(out / f"test1_{method}.csv", got, fix.probs, fix.classes)
        rep = evaluate_predictions(pred, data / "test1-labels.csv", classes=list(MER_CLASSES))
        res[method] = {"waf": rep["waf"], "accuracy": rep["accuracy"],
                       "l1": float(np.abs(fix.priors - truth).sum()), "priors": fix.priors.round(3).tolist()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("examples/mer2023"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/mer2023-st"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work, data = args.work, args.data
    work.mkdir(parents=True, exist_ok=True)
    store = work / "features.zarr"
    pool = read_names(data / "test2-names.csv") + read_names(data / "test3-names.csv")
    (work / "pool.csv").write_text("name\n" + "\n".join(pool) + "\n")
    spec = StageSpec(modality="text", clips=data / "transcription.csv", store=store, extractor="sentence", key=KEY,
                     config={"empty": "encode"}, decode=DecodeSettings(text_column="english"))
    rep = run_stage(spec, progress=False)
    assert not rep.failed, rep.failed
    labels = read_labels(data / "test1-labels.csv")
    truth = np.bincount([MER_CLASSES.index(v) for v in labels.values()], minlength=len(MER_CLASSES)) / len(labels)
    train = read_labels(data / "train-labels.csv")
    train_p = np.bincount([MER_CLASSES.index(v) for v in train.values()], minlength=len(MER_CLASSES)) / len(train)
    print(f"classes: {', '.join(MER_CLASSES)}")
    print(f"train priors: {train_p.round(3).tolist()}; true test1 priors: {truth.round(3).tolist()} "
          f"(L1 {np.abs(train_p - truth).sum():.3f})")

    base = work / "runs" / "supervised"
    print(f"$ mer fuse train -s {store} -f {KEY} -l {data}/train-labels.csv -o {base} -m single -k 5 "
          f"-T epochs={args.epochs}")
    train_run(store, [KEY], data / "train-labels.csv", base, model="single", train=TrainConfig(epochs=args.epochs),
              folds=5, classes=list(MER_CLASSES), progress=False)
    results = {"supervised": test1_scores(base, store, data, base, truth)}
    variants = {"selftrain": SelfTrainConfig(rounds=args.rounds, threshold=args.threshold, patience=args.rounds),
                "selftrain-em": SelfTrainConfig(rounds=args.rounds, threshold=args.threshold, patience=args.rounds,
                                                prior_correction="em")}
    for name, cfg in variants.items():
        out = work / "runs" / name
        print(f"$ mer fuse selftrain --run {base} --store {store} --pool {work}/pool.csv --out {out} --rounds "
              f"{cfg.rounds} --threshold {cfg.threshold} --patience {cfg.patience} --prior-correction "
              f"{cfg.prior_correction}")
        summary = run_selftrain(base, store, pool, out, cfg, progress=False)
        for r in summary["rounds"]:
            print(f"  round {r['round']}: pseudo-labels {sum(r['pseudo_per_class'].values()):.0f}, "
                  f"out-of-fold WAF {r['oof_waf']:.4f}")
        print(f"  best round: {summary['best_round']}")
        results[name] = test1_scores(out, store, data, out, truth)
    print("$ mer fuse predict --run RUN --store S --names test1-labels.csv --out P --prior-correction none|em|bbse")
    print(f"{'variant':14s} {'correction':10s} {'test1 WAF':>9s} {'accuracy':>9s} {'priors L1':>9s}")
    for name, by_method in results.items():
        for method, r in by_method.items():
            print(f"{name:14s} {method:10s} {r['waf']:9.4f} {r['accuracy']:9.4f} {r['l1']:9.3f}")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    best = max(r["waf"] for by in results.values() for r in by.values())
    print(f"mer2023_selftrain_best_waf: {best:.4f}")


if __name__ == "__main__":
    main()
