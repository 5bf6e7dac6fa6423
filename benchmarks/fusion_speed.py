"""Training and prediction time of the AGT vs the MER attention baseline at MER2024 scale.

Synthetic utterance-level features with the MER dims (CLIP 768 + HuBERT 1024 + Baichuan 5120) for
5,030 labelled clips (6 classes, class-dependent means so that training is real work) and an
unlabelled pool of 115,595 clips, stored in a mer feature store and read once. Each model is
trained with the library's own fold trainer (``fusion.train.train_fold``, the loop ``mer fuse
train`` runs: AdamW, cosine schedule, validation every epoch) for the same number of epochs (no
early stopping) on the same 5 folds; the fold ensembles then predict the pool
(``predict_probs`` on the features already in memory). Times are wall-clock on this machine's CPU
(or ``--device cuda``).

The models alternate fold by fold (fold 1: attention then AGT; fold 2: AGT then attention; ...)
and the whole 5-fold training repeats ``--repeats`` times (default 3), so a change in the load of
a shared machine hits both alike; each round gives one ratio and the median is reported. The
width is matched: the AGT at token width W (``AGTConfig.width``) against the attention baseline
at projection size W (``AttentionConfig.hidden``), for each W of ``--widths`` (default 64 and
128: the AGT's default width and the baseline's default hidden size). With both widths the script
also prints the ratio of the two models at their own defaults (AGT 64 vs attention 128), the
pairing the earlier version of this script measured.

    python benchmarks/fusion_speed.py                    # full size, 2 widths x 3 rounds (~15 min on 2 idle cores)
    python benchmarks/fusion_speed.py --widths 64        # one width (about half the time)
    python benchmarks/fusion_speed.py --threads 1        # one torch thread: steadier when other jobs share the cores
    python benchmarks/fusion_speed.py --train 600 --pool 2000 --epochs 2 --folds 2 --repeats 1   # smoke run

Last lines: ``agt_predict_ratio: Y`` and ``agt_train_ratio: X`` (AGT / attention at the first
width of ``--widths``, median over rounds; goal <= 2), after one such pair of lines per width.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score

from mer.fusion.config import TrainConfig
from mer.fusion.data import load_features
from mer.fusion.folds import make_folds
from mer.fusion.models import build_model
from mer.fusion.train import predict_probs, train_fold
from mer.store import FeatureStore, Provenance
from mer.store.tables import read_labels

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
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the whole k-fold training (median ratio)")
    ap.add_argument("--widths", default="64,128",
                    help="comma list W: AGT width W against attention hidden W (the first is the figure)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch.set_num_threads (0: torch's default; 1 is far steadier when other jobs share the cores)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: temporary, removed)")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="mer-fusion-speed-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        store_path, labels_csv, pool = make_store(root, args.train, args.pool)
        print(f"store: {args.train} labelled + {args.pool} pool clips, dims {list(DIMS.values())}, "
              f"written in {time.perf_counter() - t0:.1f} s")
        store = FeatureStore(store_path, mode="r")
        labels = read_labels(labels_csv)
        t0 = time.perf_counter()
        data = load_features(store, list(DIMS), list(labels))
        pool_data = load_features(store, list(DIMS), pool)
        print(f"features read once: {len(data)} labelled + {len(pool_data)} pool clips in {time.perf_counter() - t0:.1f} s; "
              f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
        y = np.array([CLASSES.index(labels[n]) for n in data.names])
        folds = make_folds([CLASSES[i] for i in y], args.folds, seed=0)
        cfg = TrainConfig(epochs=args.epochs, patience=args.epochs + 1, device=args.device)

        # (label, model, model config): every width matched between the two models
        variants = []
        for w in widths:
            variants += [(f"attention-{w}", "attention", {"hidden": w}), (f"agt-{w}", "agt", {"width": w})]
        train_s = {v[0]: [0.0] * args.repeats for v in variants}  # per round
        last: dict[str, list] = {v[0]: [] for v in variants}  # the last round's fold results
        oof = {v[0]: np.zeros((len(data), len(CLASSES)), np.float32) for v in variants}
        warm = TrainConfig(epochs=1, patience=2, device=args.device)
        for _, model, mcfg in variants:  # untimed: the first model trained pays torch's one-off start-up costs
            train_fold(lambda model=model, mcfg=mcfg: build_model(model, mcfg, data.dims, data.utt, len(CLASSES)),
                       data, y, folds[0].train[:512], folds[0].val[:256], len(CLASSES), warm, seed=0)
        step = 0
        for r in range(args.repeats):
            for fold in folds:
                for label, model, mcfg in variants[step % len(variants):] + variants[: step % len(variants)]:
                    def make(model=model, mcfg=mcfg):
                        return build_model(model, mcfg, data.dims, data.utt, len(CLASSES))

                    t0 = time.perf_counter()
                    res = train_fold(make, data, y, fold.train, fold.val, len(CLASSES), cfg, seed=cfg.seed + fold.index)
                    train_s[label][r] += time.perf_counter() - t0
                    if r == args.repeats - 1:
                        last[label].append(res)
                        oof[label][fold.val] = res.val_probs
                step += 1
            print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{v[0]} {train_s[v[0]][r]:.1f} s" for v in variants),
                  flush=True)

        # prediction: each fold model of the last round on the whole pool, alternating fold by fold
        pred_s = {v[0]: 0.0 for v in variants}
        rows = np.arange(len(pool_data))
        for k in range(len(folds)):
            for label, model, mcfg in variants[k % len(variants):] + variants[: k % len(variants)]:
                res = last[label][k]
                m = build_model(model, mcfg, data.dims, data.utt, len(CLASSES))
                m.load_state_dict(res.state_dict)
                t0 = time.perf_counter()
                probs = predict_probs(m.to(args.device), pool_data, rows, res.norm, args.device)
                pred_s[label] += time.perf_counter() - t0
                assert probs.shape == (len(pool), len(CLASSES)) and np.isfinite(probs).all()

        for label, model, mcfg in variants:
            waf = f1_score(y, oof[label].argmax(1), average="weighted")
            params = sum(p.numel() for p in build_model(model, mcfg, data.dims, data.utt, len(CLASSES)).parameters())
            print(f"{label:14s}: {params / 1e6:5.2f}M parameters; {args.folds}-fold training "
                  f"{statistics.median(train_s[label]):7.1f} s median of {args.repeats} "
                  f"({', '.join(f'{t:.1f}' for t in train_s[label])}; {args.epochs} epochs/fold), predict {len(pool)} "
                  f"clips x {args.folds} folds {pred_s[label]:6.1f} s, out-of-fold WAF {waf:.3f}")

        def ratio(agt: str, att: str) -> tuple[float, float]:
            per_round = [a / b for a, b in zip(train_s[agt], train_s[att])]
            return statistics.median(per_round), pred_s[agt] / pred_s[att]

        if len(widths) > 1 and 64 in widths and 128 in widths:
            tr, pr = ratio("agt-64", "attention-128")
            print(f"at their own defaults (AGT width 64 vs attention hidden 128): train ratio {tr:.2f}, predict {pr:.2f}")
        for w in widths[1:] + widths[:1]:  # the first width's lines come last
            tr, pr = ratio(f"agt-{w}", f"attention-{w}")
            suffix = "" if w == widths[0] else f"_w{w}"
            rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(train_s[f"agt-{w}"], train_s[f"attention-{w}"]))
            print(f"width {w}: train ratio per round {rounds}")
            print(f"agt_predict_ratio{suffix}: {pr:.2f}")
            print(f"agt_train_ratio{suffix}: {tr:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
