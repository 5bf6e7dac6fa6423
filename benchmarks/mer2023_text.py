"""MER2023 text only: MiniLM subtitle features (English and Chinese), MLP, WAF on test1.

Clips: the 5,030 labelled MER2023 clips' transcriptions (``name, chinese, english``; no media).
Features: the ``sentence`` extractor (bundled all-MiniLM-L6-v2, an English model) on each text
column, empty subtitles embedded as "" (``-O empty=encode``; 217 English transcripts are empty).
Model: ``single`` MLP trained on train-labels (5 stratified folds, the fold ensemble predicts
test1), once per ``--normalize`` mode (none: raw MiniLM vectors; global: z-scored with each fold's
training clips) and ``--seeds`` seed. The shared data README's floor: LogisticRegression on the
English MiniLM features, WAF 0.44.

    python benchmarks/mer2023_text.py --data ../shared/data/mer2023 --work bench-out/mer2023
    python benchmarks/mer2023_text.py --data ../shared/data/mer2023 --normalize none,global --seeds 0,1,2

Prints one line per run, a table (test1 WAF mean ± std over seeds) and, last,
``mer2023_text_waf_<column>: X`` per column (the mean over seeds of the first ``--normalize`` mode).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from mer.fusion.config import TrainConfig
from mer.fusion.eval import evaluate_predictions
from mer.fusion.predict import predict_run, write_predictions
from mer.fusion.run import train_run
from mer.pipeline.inputs import DecodeSettings
from mer.pipeline.stage import StageSpec, run_stage
from mer.store.tables import MER_CLASSES, read_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("examples/mer2023"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/mer2023"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--normalize", default="global", help="comma-separated: none, global")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    args = ap.parse_args()
    modes = args.normalize.split(",")
    for m in modes:
        if m not in ("none", "global"):
            ap.error(f"--normalize: {m!r} is not none or global (MER2023 has no speaker column for group)")
    seeds = [int(x) for x in args.seeds.split(",")]
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    clips = args.data / "transcription.csv"
    store = args.work / "features.zarr"
    results = {}
    for column in ("english", "chinese"):
        key = f"text/minilm-{column}"
        spec = StageSpec(modality="text", clips=clips, store=store, extractor="sentence", key=key,
                         config={"empty": "encode"}, decode=DecodeSettings(text_column=column))
        rep = run_stage(spec, progress=False)
        assert not rep.failed, rep.failed
        for mode in modes:
            for seed in seeds:
                run = args.work / "runs" / f"single-{column}-{mode}-seed{seed}"
                cv = train_run(store, [key], args.data / "train-labels.csv", run, model="single",
                               train=TrainConfig(epochs=args.epochs, normalize=mode, seed=seed), folds=5,
                               classes=list(MER_CLASSES), progress=False)
                names, probs, classes = predict_run(run, store, read_names(args.data / "test1-labels.csv"))
                pred, _ = write_predictions(run / "test1_predictions.csv", names, probs, classes)
                test = evaluate_predictions(pred, args.data / "test1-labels.csv", classes=list(MER_CLASSES))
                results.setdefault((column, mode), []).append((cv["summary"]["waf"]["mean"], test["accuracy"],
                                                               test["waf"]))
                print(f"{column:8s} normalize={mode:6s} seed={seed}: train 5-fold WAF "
                      f"{cv['summary']['waf']['mean']:.3f} ± {cv['summary']['waf']['std']:.3f}; "
                      f"test1 accuracy {test['accuracy']:.3f}, WAF {test['waf']:.3f} (n={test['n']})", flush=True)
    print("\n| subtitles | normalize | seeds | train 5-fold WAF | test1 acc | test1 WAF |\n|---|---|---|---|---|---|")
    for (column, mode), rows in results.items():
        r = np.asarray(rows)
        print(f"| {column} | {mode} | {args.seeds} | {r[:, 0].mean():.3f} | {r[:, 1].mean():.3f} "
              f"| {r[:, 2].mean():.3f} ± {r[:, 2].std():.3f} |")
    for column in ("chinese", "english"):
        print(f"mer2023_text_waf_{column}: {np.mean([w for *_, w in results[(column, modes[0])]]):.3f}")


if __name__ == "__main__":
    main()
