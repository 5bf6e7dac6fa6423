"""Label-shift correction under known shifts: a labelled test split resampled to other class mixes.

For a trained run and a labelled test split, each shift draws ``--n`` test clips (with replacement)
so that the classes follow a random Dirichlet mix (or the split's own mix for shift 0), then
compares, on the same draws: no correction, EM and BBSE estimated per fold model (what
``mer fuse predict --prior-correction`` does), the same estimators on the ensemble average with the
pooled out-of-fold predictions, and the true priors (the ceiling). Prints the L1 error of each
prior estimate and the WAF after each correction, per shift and on average.

    python benchmarks/label_shift.py --run bench-out/mer2023-st/runs/supervised \
        --store bench-out/mer2023-st/features.zarr --labels examples/mer2023/test1-labels.csv

Last line: ``label_shift_waf_gain_em: X`` (mean WAF with per-fold EM minus WAF without correction).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from mer.fusion.predict import fold_probs, run_oof
from mer.fusion.priors import adjust_posteriors, correct
from mer.store.tables import read_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a `mer fuse train` run")
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--labels", type=Path, required=True, help="labelled test split (name,discrete)")
    ap.add_argument("--shifts", type=int, default=8, help="random class mixes (Dirichlet(1)), plus the split's own")
    ap.add_argument("--n", type=int, default=600, help="clips drawn per shift")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    labels = read_labels(args.labels)
    names, per_fold, classes = fold_probs(args.run, args.store, list(labels))
    y = np.array([classes.index(labels[n]) for n in names])
    oof = run_oof(args.run)
    rng = np.random.default_rng(args.seed)
    c = len(classes)
    present = np.array([(y == k).any() for k in range(c)])
    mixes = [np.bincount(y, minlength=c) / len(y)]
    for _ in range(args.shifts):
        m = rng.dirichlet(np.ones(c)) * present
        mixes.append(m / m.sum())
    rows = []
    print(f"run {args.run}: {len(classes)} classes, {len(per_fold)} fold models; test split {args.labels} "
          f"({len(y)} clips); {args.n} clips per shift")
    print(f"{'shift':>5s} {'L1 train':>8s} | {'L1 em':>6s} {'L1 bbse':>7s} {'L1 em*':>6s} {'L1 bbse*':>8s} | "
          f"{'WAF none':>8s} {'em':>6s} {'bbse':>6s} {'em*':>6s} {'bbse*':>6s} {'oracle':>6s}")
    for s, mix in enumerate(mixes):
        counts = np.round(mix * args.n).astype(int)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == k), counts[k], replace=True)
                              for k in range(c) if counts[k] > 0])
        ys, fp = y[idx], per_fold[:, idx]
        ens = fp.mean(0)
        true = np.bincount(ys, minlength=c) / len(ys)
        waf = lambda p: f1_score(ys, p.argmax(1), average="weighted")  # noqa: E731
        row = {"l1_train": np.abs(oof.priors - true).sum(), "none": waf(ens),
               "oracle": waf(adjust_posteriors(ens, oof.priors, true))}
        for method in ("em", "bbse"):
            for tag, kw in ((method, {"fold_probs": fp}), (method + "*", {})):
                fix = correct(ens, method, oof, **kw)
                row["l1_" + tag] = np.abs(fix.priors - true).sum()
                row[tag] = waf(fix.probs)
        rows.append(row)
        print(f"{s:5d} {row['l1_train']:8.3f} | {row['l1_em']:6.3f} {row['l1_bbse']:7.3f} {row['l1_em*']:6.3f} "
              f"{row['l1_bbse*']:8.3f} | {row['none']:8.4f} {row['em']:6.4f} {row['bbse']:6.4f} "
              f"{row['em*']:6.4f} {row['bbse*']:6.4f} {row['oracle']:6.4f}")
    mean = {k: float(np.mean([r[k] for r in rows[1:]])) for k in rows[0]}
    print(f" mean {mean['l1_train']:8.3f} | {mean['l1_em']:6.3f} {mean['l1_bbse']:7.3f} {mean['l1_em*']:6.3f} "
          f"{mean['l1_bbse*']:8.3f} | {mean['none']:8.4f} {mean['em']:6.4f} {mean['bbse']:6.4f} "
          f"{mean['em*']:6.4f} {mean['bbse*']:6.4f} {mean['oracle']:6.4f}   (random shifts 1-{args.shifts})")
    print("em, bbse: estimated per fold model (mer's default); em*, bbse*: on the ensemble average with the "
          "pooled out-of-fold predictions; shift 0: the split's own class mix")
    print(f"label_shift_waf_gain_bbse: {mean['bbse'] - mean['none']:.4f}")
    print(f"label_shift_waf_gain_em: {mean['em'] - mean['none']:.4f}")


if __name__ == "__main__":
    main()
