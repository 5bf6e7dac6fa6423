"""Training and prediction time of the AGT vs the MER attention baseline at MER2024 scale.

Synthetic utterance-level features with the MER dims (CLIP 768 + HuBERT 1024 + Baichuan 5120) for
5,030 labelled clips (6 classes, class-dependent means so that training is real work) and an
unlabelled pool of 115,595 clips, stored in a mer feature store. Both models run 5-fold training
for the same number of epochs (no early stopping), then predict the pool with their 5-fold
ensemble. Times are wall-clock on this machine's CPU (or --device cuda).

    python benchmarks/fusion_speed.py                    # full size (~10 min on 2 cores)
    python benchmarks/fusion_speed.py --pool 20000 --epochs 5

Last line: ``agt_train_ratio: X`` (AGT training time / attention training time). Goal <= 2.
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mer.fusion.config import TrainConfig
from mer.fusion.predict import predict_run
from mer.fusion.run import train_run
from mer.store import FeatureStore, Provenance

DIMS = {"video/clip-vit-l": 768, "audio/hubert-large": 1024, "text/baichuan-13b": 5120}
CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


def make_store(root: Path, n_train: int, n_pool: int, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """Write the synthetic sets (float16) and the label file; returns store, labels, pool names."""
    rng = np.random.default_rng(seed)
    store = FeatureStore(root / "features.zarr")
    y = rng.integers(0, len(CLASSES), n_train)
    names = [f"train_{i:06d}" for i in range(n_train)] + [f"pool_{i:06d}" for i in range(n_pool)]
    for key, dim in DIMS.items():
        fs = store.create(key, level="utt", dim=dim, provenance=Provenance(extractor="synthetic", config={"dim": dim}))
        centers = rng.standard_normal((len(CLASSES), dim)).astype(np.float32) * 0.02
        with fs.writer(flush_rows=8192) as w:
            for lo in range(0, len(names), 8192):
                chunk = names[lo:lo + 8192]
                x = rng.standard_normal((len(chunk), dim)).astype(np.float32)
                lab = [y[int(n[6:])] if n.startswith("train_") else rng.integers(0, len(CLASSES)) for n in chunk]
                x += centers[lab]
                w.add_batch(chunk, x)
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["name", "discrete"])
        wr.writerows((names[i], CLASSES[y[i]]) for i in range(n_train))
    return store.path, labels, names[n_train:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=5030, help="labelled clips")
    ap.add_argument("--pool", type=int, default=115_595, help="unlabelled clips to predict")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per fold (both models, no early stop)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: temporary, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="mer-fusion-speed-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        store, labels, pool = make_store(root, args.train, args.pool)
        print(f"store: {args.train} labelled + {args.pool} pool clips, dims {list(DIMS.values())}, "
              f"written in {time.perf_counter() - t0:.1f} s")
        cfg = TrainConfig(epochs=args.epochs, patience=args.epochs + 1, device=args.device)
        FeatureStore(store).join(list(DIMS), how="outer")  # warm the page cache for both models alike
        times: dict[str, dict[str, float]] = {}
        for model in ("attention", "agt"):
            t0 = time.perf_counter()
            m = train_run(store, list(DIMS), labels, root / model, model=model, train=cfg, folds=args.folds,
                          progress=False)
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            got, probs, _ = predict_run(root / model, store, pool, device=args.device)
            t_pred = time.perf_counter() - t0
            assert len(got) == len(pool) and np.isfinite(probs).all()
            times[model] = {"train": t_train, "predict": t_pred, "waf": m["summary"]["waf"]["mean"]}
            print(f"{model:9s}: {args.folds}-fold training {t_train:7.1f} s ({args.epochs} epochs/fold), "
                  f"predict {len(pool)} clips {t_pred:6.1f} s, CV WAF {m['summary']['waf']['mean']:.3f}")
        print(f"agt_predict_ratio: {times['agt']['predict'] / times['attention']['predict']:.2f}")
        print(f"agt_train_ratio: {times['agt']['train'] / times['attention']['train']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
