"""MER2023 text: test1 WAF of MiniLM subtitle features before and after fine-tuning MiniLM on the train labels.

1. Fine-tune the bundled all-MiniLM-L6-v2 (``mer finetune text``, full fine-tuning, mean-pooled head)
   on the English subtitles of MER2023 train-labels (90 %; 10 % stratified validation). test1 clips
   are excluded explicitly (they are not in train-labels anyway). Empty subtitles are not trained on.
2. Extract ``sentence`` features (L2-normalised mean pool, empty subtitles embedded as "") of all
   5,030 clips with the base model and with the fine-tuned folder.
3. Same downstream classifiers on both feature sets, trained on train-labels, scored on test1:
   LogisticRegression C=1 (the shared data README's floor: 0.44 with the base model) and the
   ``single`` fusion MLP (5 stratified folds, fold ensemble predicts test1, as mer2023_text.py).

Caveat: the fine-tuned encoder has seen the labels of 90 % of the clips the downstream classifier
trains on, so their features are more separable than test1's; test1 stays untouched throughout.

    OMP_NUM_THREADS=1 python benchmarks/finetune_minilm.py --data ../shared/data/mer2023 \
        --work bench-out/finetune-minilm --epochs 2 --threads 1

Last lines: ``finetune_minilm_waf_before: X`` and ``finetune_minilm_waf_after: Y`` (LogisticRegression).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from mer.finetune.data import SplitConfig
from mer.finetune.text import TextFinetuneConfig, finetune_text
from mer.finetune.train import TrainConfig
from mer.fusion.config import TrainConfig as FusionTrainConfig
from mer.fusion.eval import evaluate_predictions
from mer.fusion.predict import predict_run, write_predictions
from mer.fusion.run import train_run
from mer.pipeline.inputs import DecodeSettings
from mer.pipeline.stage import StageSpec, run_stage
from mer.store import FeatureStore
from mer.store.tables import MER_CLASSES, read_labels, read_names


def extract(clips: Path, store: Path, key: str, model: str) -> float:
    """``sentence`` features of every clip's English subtitle; returns seconds."""
    t0 = time.perf_counter()
    spec = StageSpec(modality="text", clips=clips, store=store, extractor="sentence", key=key,
                     config={"empty": "encode", "model": model, "batch_size": 128},
                     decode=DecodeSettings(text_column="english"))
    rep = run_stage(spec, progress=False)
    assert not rep.failed, rep.failed
    return time.perf_counter() - t0


def logreg_waf(store: Path, key: str, data: Path) -> dict[str, float]:
    """LogisticRegression C=1 on train-labels -> test1 accuracy and WAF."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    fs = FeatureStore(store, mode="r")[key]
    train = read_labels(data / "train-labels.csv", MER_CLASSES)
    test = read_labels(data / "test1-labels.csv", MER_CLASSES)
    xtr, xte = fs.read(list(train), dtype="float32"), fs.read(list(test), dtype="float32")
    clf = LogisticRegression(C=1.0, max_iter=3000).fit(xtr, list(train.values()))
    pred = clf.predict(xte)
    return {"accuracy": float(accuracy_score(list(test.values()), pred)),
            "waf": float(f1_score(list(test.values()), pred, average="weighted"))}


def mlp_waf(store: Path, key: str, data: Path, run: Path, epochs: int) -> dict[str, float]:
    """The ``single`` fusion MLP (5 folds on train-labels, fold ensemble on test1)."""
    cv = train_run(store, [key], data / "train-labels.csv", run, model="single",
                   train=FusionTrainConfig(epochs=epochs), folds=5, classes=list(MER_CLASSES), progress=False)
    names, probs, classes = predict_run(run, store, read_names(data / "test1-labels.csv"))
    pred, _ = write_predictions(run / "test1_predictions.csv", names, probs, classes)
    test = evaluate_predictions(pred, data / "test1-labels.csv", classes=list(MER_CLASSES))
    return {"cv_waf": float(cv["summary"]["waf"]["mean"]), "accuracy": float(test["accuracy"]),
            "waf": float(test["waf"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("examples/mer2023"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/finetune-minilm"))
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=5e-5, help="fine-tuning learning rate of MiniLM")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning (head, dropout, batches, split)")
    ap.add_argument("--mlp-epochs", type=int, default=60, help="epochs of the downstream MLP")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); 1 is much faster "
                    "when other processes share the cores")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "mer.pipeline", "mer.store", "mer.fusion"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    clips = args.data / "transcription.csv"
    store = args.work / "features.zarr"
    out = args.work / "minilm-ft"

    t0 = time.perf_counter()
    rec = finetune_text(clips, args.data / "train-labels.csv", out,
                        TextFinetuneConfig(model="all-MiniLM-L6-v2", text_column="english", pooling="mean"),
                        SplitConfig(exclude=[str(args.data / "test1-labels.csv")], val_fraction=0.1,
                                    classes=list(MER_CLASSES), seed=args.seed),
                        TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, head_lr=1e-3,
                                    seed=args.seed),
                        overwrite=True, progress=False)
    ft_seconds = time.perf_counter() - t0
    hist = rec["history"]
    print(f"fine-tune: {rec['trained_on']['count']} clips, {rec['steps']} steps, {ft_seconds:.0f} s; validation WAF "
          + " -> ".join(f"{h['val_waf']:.3f}" for h in hist), flush=True)

    results = {}
    for label, model in (("before", "all-MiniLM-L6-v2"), ("after", str(out))):
        key = f"text/minilm-{label}"
        secs = extract(clips, store, key, model)
        lr = logreg_waf(store, key, args.data)
        mlp = mlp_waf(store, key, args.data, args.work / "runs" / label, args.mlp_epochs)
        results[label] = {"extract_seconds": round(secs, 1), "logreg": lr, "mlp": mlp}
        print(f"{label:6s}: test1 LogisticRegression accuracy {lr['accuracy']:.3f} WAF {lr['waf']:.3f}; "
              f"single MLP 5-fold WAF {mlp['cv_waf']:.3f}, test1 accuracy {mlp['accuracy']:.3f} WAF {mlp['waf']:.3f}",
              flush=True)
    results["finetune"] = {"seconds": round(ft_seconds, 1), "history": hist, "steps": rec["steps"],
                           "trained_on": rec["trained_on"]["count"], "epochs": args.epochs, "lr": args.lr,
                           "seed": args.seed, "batch_size": args.batch_size}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"finetune_minilm_mlp_waf_before: {results['before']['mlp']['waf']:.3f}")
    print(f"finetune_minilm_mlp_waf_after: {results['after']['mlp']['waf']:.3f}")
    print(f"finetune_minilm_waf_before: {results['before']['logreg']['waf']:.3f}")
    print(f"finetune_minilm_waf_after: {results['after']['logreg']['waf']:.3f}")


if __name__ == "__main__":
    main()
