"""Label-shift correction (mer.fusion.priors, `mer fuse predict --prior-correction`).

Exact checks on synthetic Gaussian classes whose Bayes posteriors are known, then a known shift on
real data: the bundled MER2023 subtitles (MiniLM features, an MLP trained on train-labels), with
test1 resampled to clearly different class distributions. The estimated priors must land near the
true ones and the corrected predictions must score a higher WAF than the uncorrected ones.
"""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import MER2023 as MER
from conftest import mer_cli
from mer.fusion.priors import (OutOfFold, adjust_posteriors, bbse_priors, correct, em_priors, fit_calibration,
                               parse_priors)

CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]


# ---- synthetic: exact posteriors ---------------------------------------------------------------

def _gaussians(seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 1.2, (4, 5))

    def sample(priors, n):
        y = rng.choice(4, n, p=priors)
        return means[y] + rng.normal(0, 1, (n, 5)), y

    def posterior(x, priors):
        logit = -0.5 * ((x[:, None, :] - means[None]) ** 2).sum(-1) + np.log(priors)
        e = np.exp(logit - logit.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    return sample, posterior


def test_em_and_bbse_recover_known_priors_from_exact_posteriors():
    sample, posterior = _gaussians()
    train, target = np.full(4, 0.25), np.array([0.55, 0.25, 0.15, 0.05])
    xs, ys = sample(train, 4000)
    xt, yt = sample(target, 3000)
    oof = OutOfFold([str(i) for i in range(len(ys))], ys, posterior(xs, train), list("abcd"))
    true = np.bincount(yt, minlength=4) / len(yt)
    before = (posterior(xt, train).argmax(1) == yt).mean()
    for method, tolerance in (("em", 0.07), ("bbse", 0.12)):  # BBSE uses hard predictions only: noisier
        fix = correct(posterior(xt, train), method, oof)
        assert np.abs(fix.priors - true).sum() < tolerance, (method, fix.priors)
        assert (fix.probs.argmax(1) == yt).mean() > before + 0.02
    # exact posteriors re-weighted by the exact priors are the Bayes posteriors under them
    np.testing.assert_allclose(adjust_posteriors(posterior(xt, train), train, target), posterior(xt, target),
                               rtol=1e-9, atol=1e-12)


def test_no_shift_changes_nothing_and_priors_parse():
    sample, posterior = _gaussians(1)
    x, y = sample(np.full(4, 0.25), 2000)
    p = posterior(x, np.full(4, 0.25))
    np.testing.assert_allclose(adjust_posteriors(p, [0.25] * 4, [0.25] * 4), p, atol=1e-12)
    est, _ = em_priors(p, np.full(4, 0.25))
    assert np.abs(est - np.bincount(y, minlength=4) / len(y)).sum() < 0.1  # the MLE has its own noise
    assert np.abs(bbse_priors(p.argmax(1), y, p.argmax(1), 4) - np.bincount(y, minlength=4) / len(y)).sum() < 1e-9
    np.testing.assert_allclose(parse_priors("a=2, b=1,c=1,d=0", list("abcd")), [0.5, 0.25, 0.25, 0.0])
    for bad, msg in (("a=1,b=1,c=1", "no value for d"), ("a=1,b=1,c=1,d=1,e=1", "unknown class 'e'"),
                     ("a=x,b=1,c=1,d=1", "not a number"), ("a=-1,b=1,c=1,d=1", ">= 0")):
        with pytest.raises(ValueError, match=msg):
            parse_priors(bad, list("abcd"))


def test_calibration_keeps_mean_posterior_equal_to_class_frequencies():
    """Bias-corrected temperature scaling: over-confident posteriors get T > 1 and the calibrated mean
    posterior equals the class frequencies (what keeps EM from running away)."""
    sample, posterior = _gaussians(2)
    priors = np.array([0.5, 0.3, 0.15, 0.05])
    x, y = sample(priors, 4000)
    sharp = posterior(x, priors) ** 3
    sharp /= sharp.sum(1, keepdims=True)
    cal = fit_calibration(sharp, y)
    assert 2.0 < cal.temperature < 4.0
    np.testing.assert_allclose(cal(sharp).mean(0), np.bincount(y) / len(y), atol=2e-3)


# ---- real data: MER2023 subtitles, test1 resampled ------------------------------------------------

SHIFTS = {"happy-heavy": [0.05, 0.10, 0.45, 0.25, 0.10, 0.05],
          "neutral-rare": [0.02, 0.30, 0.10, 0.28, 0.25, 0.05],
          "worried-heavy": [0.10, 0.10, 0.10, 0.10, 0.50, 0.10]}


RESAMPLES = 3  # draws of 600 clips per shift (with replacement), seeds 0..2
# Limits on the 9-draw means. Measured on an AVX2 CPU with the fixture's MLP trained under seeds 0
# and 1 (a larger perturbation than any float difference between machines): mean L1 ratio
# 0.40-0.41 (EM), 0.41-0.46 (BBSE); mean WAF gain 0.077-0.085 (EM), 0.085-0.091 (BBSE), with the
# epoch picked on the validation fold. With the epoch picked on an inner split (the default since
# 2026-12-03), seed 0: L1 ratio 0.444 (EM), 0.422 (BBSE); WAF gain 0.067 (EM), 0.082 (BBSE).
MEAN_L1_RATIO = {"em": 0.6, "bbse": 0.65}
MEAN_GAIN = {"em": 0.04, "bbse": 0.04}


@pytest.mark.parametrize("method", ["em", "bbse"])
def test_known_shift_on_real_features(mer_text, method):
    """Over 3 shifts x 3 draws the estimate removes most of the distance to the true priors and WAF
    rises clearly; in every draw the estimate is closer than the training priors and WAF does not
    drop by much.

    Why these margins: the figures move with the machine's float results (kernels, threads), through
    the trained MLP and then through EM/BBSE; on one AMX machine a single draw (neutral-rare, BBSE)
    gave an L1 ratio of 0.77 where the old per-draw limit was 0.75. So per draw only the direction
    is asserted, with room (ratio < 0.95, WAF not 0.02 below; the worst draws seen here: 0.75 and
    -0.005), and the strength on the 9-draw means, whose limits leave about 0.2 in ratio and 0.04 in
    WAF to the means measured under two training seeds (see MEAN_L1_RATIO; printed with -s)."""
    from mer.fusion.predict import fold_probs, run_oof
    from mer.store.tables import read_labels

    labels = read_labels(MER / "test1-labels.csv")
    names, per_fold, classes = fold_probs(mer_text / "run", mer_text / "features.zarr", list(labels))
    y = np.array([classes.index(labels[n]) for n in names])
    oof = run_oof(mer_text / "run")
    assert oof.fold is not None and set(oof.fold.tolist()) == {0, 1, 2, 3, 4}
    ratios, gains = [], []
    for shift, mix in SHIFTS.items():
        for seed in range(RESAMPLES):
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.choice(np.flatnonzero(y == c), int(round(share * 600)), replace=True)
                                  for c, share in enumerate(mix)])
            ys, fp = y[idx], per_fold[:, idx]
            true = np.bincount(ys, minlength=len(classes)) / len(ys)
            l1_train = np.abs(oof.priors - true).sum()
            assert l1_train > 0.5  # a clear shift
            waf_before = f1_score(ys, fp.mean(0).argmax(1), average="weighted")
            fix = correct(fp.mean(0), method, oof, fold_probs=fp)
            l1 = np.abs(fix.priors - true).sum()
            waf = f1_score(ys, fix.probs.argmax(1), average="weighted")
            print(f"{shift} draw {seed} {method}: L1 {l1_train:.3f} -> {l1:.3f} ({l1 / l1_train:.3f}), "
                  f"WAF {waf_before:.4f} -> {waf:.4f}")
            assert l1 < 0.95 * l1_train, (shift, seed, fix.priors.round(3), true.round(3))
            assert waf > waf_before - 0.02, (shift, seed, waf_before, waf)
            ratios.append(l1 / l1_train)
            gains.append(waf - waf_before)
    print(f"{method}: mean L1 ratio {np.mean(ratios):.3f}, mean WAF gain {np.mean(gains):.4f}")
    assert np.mean(ratios) < MEAN_L1_RATIO[method], ratios
    assert np.mean(gains) > MEAN_GAIN[method], gains


def test_predict_cli_prior_correction_and_vote(mer_text, tmp_path):
    store, run = mer_text / "features.zarr", mer_text / "run"
    test1 = MER / "test1-labels.csv"
    outs = {}
    for method in ("none", "em", "bbse"):
        out = tmp_path / f"pred-{method}.csv"
        res = subprocess.run([*mer_cli(), "fuse", "predict", "--run", run, "--store", store, "--names", test1,
                              "--out", out, "--prior-correction", method], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        outs[method] = out
    report = json.loads((tmp_path / "pred-em_priors.json").read_text())
    assert report["method"] == "em" and report["per_fold"] is True
    assert abs(sum(report["estimated_priors"].values()) - 1) < 1e-4
    assert set(report["train_priors"]) == set(CLASSES)
    assert (tmp_path / "pred-em_priors.png").read_bytes()[:4] == b"\x89PNG"
    assert "estimated" in res.stdout and "training" in res.stdout
    given = subprocess.run([*mer_cli(), "fuse", "predict", "--run", run, "--store", store, "--names", test1,
                            "--out", tmp_path / "g.csv", "--prior-correction", "given", "--priors", "happy=1"],
                           capture_output=True, text=True)
    assert given.returncode == 1 and "no value for neutral" in given.stderr and "Traceback" not in given.stderr

    # voting: the mean of three probability files equals the average of their columns
    res = subprocess.run([*mer_cli(), "fuse", "vote", *outs.values(), "--out", tmp_path / "vote.csv",
                          "--method", "mean"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    probs = [np.loadtxt(p.with_name(p.stem + "_probs.csv"), delimiter=",", skiprows=1, usecols=range(1, 7))
             for p in outs.values()]
    voted = np.loadtxt(tmp_path / "vote_probs.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    np.testing.assert_allclose(voted, np.mean(probs, 0), atol=2e-6)
    with open(tmp_path / "vote.csv") as f:
        rows = list(csv.DictReader(f))
    assert [CLASSES[i] for i in voted.argmax(1)] == [r["discrete"] for r in rows]
