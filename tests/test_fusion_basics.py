"""Fusion building blocks: metrics (against sklearn), folds, plots and submission scoring."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mer.fusion.eval import evaluate_predictions
from mer.fusion.folds import Fold, fixed_split, make_folds
from mer.fusion.metrics import classification_report, summarize_folds

REPO = Path(__file__).resolve().parents[1]
RAVDESS_CLIPS = REPO / "examples" / "ravdess" / "clips.csv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ravdess() -> tuple[list[str], list[str], list[str]]:
    """Names, emotion labels and actors of the bundled RAVDESS sample."""
    with open(RAVDESS_CLIPS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["name"] for r in rows], [r["emotion"] for r in rows], [r["actor"] for r in rows]


def assert_matches_sklearn(y_true, y_pred, classes) -> dict:
    rep = classification_report(y_true, y_pred, classes)
    assert rep["n"] == len(y_true)
    assert rep["accuracy"] == accuracy_score(y_true, y_pred)
    assert rep["waf"] == f1_score(y_true, y_pred, labels=classes, average="weighted", zero_division=0)
    assert rep["macro_f1"] == f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    assert list(rep["per_class"]) == classes
    for i, c in enumerate(classes):
        assert rep["per_class"][c] == {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}
    assert rep["confusion"] == confusion_matrix(y_true, y_pred, labels=classes).tolist()
    # plain Python types: the report is JSON-able as is
    json.dumps(rep)
    assert type(rep["waf"]) is float and type(rep["n"]) is int
    assert all(type(v) is int for row in rep["confusion"] for v in row)
    assert all(type(rep["per_class"][c]["support"]) is int for c in classes)
    return rep


# --------------------------------------------------------------------------------------- metrics


def test_report_fixed_predictions_known_values():
    classes = ["angry", "happy", "sad", "worried"]  # "worried" never present nor predicted
    y_true = ["angry", "angry", "happy", "happy", "happy", "sad"]
    y_pred = ["angry", "happy", "happy", "happy", "angry", "angry"]  # "sad" never predicted
    rep = assert_matches_sklearn(y_true, y_pred, classes)
    assert rep["accuracy"] == pytest.approx(3 / 6)
    assert rep["confusion"] == [[1, 1, 0, 0], [1, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # angry: P 1/3 R 1/2 F 0.4; happy: P 2/3 R 2/3 F 2/3; sad: 0; worried: 0
    assert rep["per_class"]["angry"]["f1"] == pytest.approx(0.4)
    assert rep["per_class"]["happy"]["f1"] == pytest.approx(2 / 3)
    assert rep["per_class"]["sad"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rep["per_class"]["worried"]["support"] == 0
    assert rep["waf"] == pytest.approx((2 * 0.4 + 3 * 2 / 3) / 6)
    assert rep["macro_f1"] == pytest.approx((0.4 + 2 / 3) / 4)


def test_report_random_predictions_match_sklearn():
    rng = np.random.default_rng(7)
    classes = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
    for trial in range(20):
        n = int(rng.integers(5, 200))
        # "surprise" is never present in y_true; "worried" never predicted
        y_true = rng.choice(classes[:5], size=n)
        y_pred = rng.choice([c for c in classes if c != "worried"], size=n)
        if trial % 2:
            y_true, y_pred = list(y_true), list(y_pred)  # lists and arrays both accepted
        assert_matches_sklearn(y_true, y_pred, classes)


def test_report_perfect_and_errors():
    rep = classification_report(["a", "b", "b"], ["a", "b", "b"], ["a", "b"])
    assert rep["accuracy"] == rep["waf"] == rep["macro_f1"] == 1.0
    with pytest.raises(ValueError, match="entries"):
        classification_report(["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [], ["a"])
    with pytest.raises(ValueError, match="zzz"):
        classification_report(["a", "zzz"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="predictions.*q"):
        classification_report(["a", "b"], ["a", "q"], ["a", "b"])


def test_summarize_folds():
    reports = [{"accuracy": 0.5, "waf": 0.4, "macro_f1": 0.3},
               {"accuracy": 0.7, "waf": 0.6, "macro_f1": 0.3},
               {"accuracy": 0.9, "waf": 0.8, "macro_f1": 0.6}]
    s = summarize_folds(reports)
    assert set(s) == {"accuracy", "waf", "macro_f1"}
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["std"] == pytest.approx(math.sqrt(((0.2) ** 2 + 0 + 0.2 ** 2) / 3))
    assert s["waf"]["mean"] == pytest.approx(0.6)
    assert s["waf"]["std"] == pytest.approx(np.std([0.4, 0.6, 0.8]))
    assert s["macro_f1"] == {"mean": pytest.approx(0.4), "std": pytest.approx(np.std([0.3, 0.3, 0.6], ddof=0))}
    assert all(type(v) is float for m in s.values() for v in m.values())
    single = summarize_folds([reports[0]])
    assert single["waf"] == {"mean": 0.4, "std": 0.0}
    with pytest.raises(ValueError):
        summarize_folds([])
    with pytest.raises(ValueError, match="waf"):
        summarize_folds([{"accuracy": 1.0, "macro_f1": 1.0}])


# ----------------------------------------------------------------------------------------- folds


def assert_partition(folds: list[Fold], n: int, n_folds: int) -> None:
    assert [f.index for f in folds] == list(range(n_folds))
    seen = np.concatenate([f.val for f in folds])
    assert sorted(seen.tolist()) == list(range(n))  # each clip validated exactly once
    for f in folds:
        assert f.train.dtype.kind == "i" and f.val.dtype.kind == "i"
        assert not set(f.train.tolist()) & set(f.val.tolist())
        assert sorted(np.concatenate([f.train, f.val]).tolist()) == list(range(n))


def test_grouped_folds_keep_speakers_apart_on_ravdess():
    names, labels, actors = ravdess()
    assert len(names) == 360 and len(set(actors)) == 12
    folds = make_folds(labels, 5, groups=actors, seed=0)
    assert len(folds) == 5
    assert_partition(folds, 360, 5)
    actors_arr = np.array(actors)
    val_fold_of_actor: dict[str, list[int]] = {}
    for f in folds:
        train_actors, val_actors = set(actors_arr[f.train]), set(actors_arr[f.val])
        assert not train_actors & val_actors, f"fold {f.index}: speakers on both sides"
        assert train_actors | val_actors == set(actors)
        for a in val_actors:
            val_fold_of_actor.setdefault(a, []).append(f.index)
    assert set(val_fold_of_actor) == set(actors)
    assert all(len(v) == 1 for v in val_fold_of_actor.values())


def test_stratified_folds_keep_class_proportions():
    _, labels, _ = ravdess()
    totals = Counter(labels)
    folds = make_folds(labels, 5, seed=3)
    assert_partition(folds, 360, 5)
    y = np.array(labels)
    for f in folds:
        counts = Counter(y[f.val].tolist())
        for c, total in totals.items():
            assert abs(counts.get(c, 0) - total / 5) <= 1, (f.index, c, counts.get(c, 0), total)


@pytest.mark.parametrize("grouped", [False, True])
def test_folds_deterministic_per_seed(grouped):
    _, labels, actors = ravdess()
    groups = actors if grouped else None
    a = make_folds(labels, 5, groups=groups, seed=11)
    b = make_folds(labels, 5, groups=groups, seed=11)
    c = make_folds(labels, 5, groups=groups, seed=12)
    assert all(np.array_equal(x.val, y.val) and np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert any(not np.array_equal(x.val, y.val) for x, y in zip(a, c))


def test_make_folds_errors():
    _, labels, actors = ravdess()
    few = [str(int(a) % 3) for a in actors]  # 3 speakers
    with pytest.raises(ValueError, match=r"only 3 distinct groups.*5 folds"):
        make_folds(labels, 5, groups=few)
    with pytest.raises(ValueError, match="groups has"):
        make_folds(labels, 5, groups=actors[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(labels, 1)
    with pytest.raises(ValueError, match="clips"):
        make_folds(["a", "b"], 5)


def test_fixed_split():
    names = ["c0", "c1", "c2", "c3", "c4"]
    (fold,) = fixed_split(names, ["c3", "c1", "c3"])
    assert fold.index == 0
    assert fold.val.tolist() == [1, 3]
    assert fold.train.tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match=r"2 validation clips are not in the clip list: nope, gone"):
        fixed_split(names, ["c1", "nope", "gone"])
    with pytest.raises(ValueError, match="nothing left to train"):
        fixed_split(names, names)
    with pytest.raises(ValueError, match="no validation"):
        fixed_split(names, [])
    with pytest.raises(ValueError, match="duplicate"):
        fixed_split(["a", "a", "b"], ["b"])


# ----------------------------------------------------------------------------------------- plots


def assert_png(path: Path, min_side: int = 100) -> None:
    import matplotlib.image

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= min_side and img.shape[1] >= min_side
    assert float(img.std()) > 0  # not a blank canvas


def test_plots_write_pngs(tmp_path):
    from mer.fusion.plots import plot_bars, plot_confusion, plot_learning_curves

    classes = ["neutral", "angry", "happy", "sad"]
    rep = classification_report(["neutral", "angry", "happy", "happy", "sad"],
                                ["neutral", "happy", "happy", "happy", "neutral"], classes + ["worried"])
    out = plot_confusion(rep["confusion"], classes + ["worried"], tmp_path / "sub" / "cm.png", title="fold 0")
    assert out == tmp_path / "sub" / "cm.png"
    assert_png(out)

    histories = [{"train_loss": [1.2, 0.9, 0.7], "val_loss": [1.3, 1.1, 1.0], "val_waf": [0.3, 0.4, 0.45]},
                 {"train_loss": [1.1, 0.8], "val_loss": [1.2, 1.0], "val_waf": [0.35, 0.5]}]
    assert_png(plot_learning_curves(histories, tmp_path / "curves.png", title="AGT"))

    assert_png(plot_bars({"attention": 0.61, "concat-mlp": 0.58, "late-vote": 0.55},
                         tmp_path / "bars.png", ylabel="WAF", title="compare"))

    with pytest.raises(ValueError, match="shape"):
        plot_confusion([[1, 2], [3, 4]], classes, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_learning_curves([], tmp_path / "none.png")
    with pytest.raises(ValueError):
        plot_bars({}, tmp_path / "none.png", ylabel="WAF")


# ------------------------------------------------------------------------------------ evaluation


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "discrete"])
        w.writerows(rows)
    return path


def test_evaluate_predictions(tmp_path):
    labels = write_csv(tmp_path / "labels.csv", [("s1", "happy"), ("s2", "sad"), ("s3", "happy"),
                                                 ("s4", "angry")])
    preds = write_csv(tmp_path / "pred.csv", [("s4", "angry"), ("s3", "sad"), ("extra1", "happy"),
                                              ("s2", "sad"), ("s1", "happy"), ("extra2", "sad")])
    rep = evaluate_predictions(preds, labels)
    assert rep["n"] == 4 and rep["n_unlabelled"] == 2 and rep["n_predictions"] == 6
    assert rep["accuracy"] == 0.75
    assert list(rep["per_class"]) == ["angry", "happy", "sad"]
    # angry F1 1, happy P1 R0.5 F 2/3 (support 2), sad P 0.5 R 1 F 2/3
    assert rep["waf"] == pytest.approx((1 + 2 * 2 / 3 + 2 / 3) / 4)
    assert rep["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]

    rep6 = evaluate_predictions(preds, labels, classes=["neutral", "angry", "happy", "sad", "worried", "surprise"])
    assert rep6["waf"] == pytest.approx(rep["waf"])
    assert list(rep6["per_class"])[0] == "neutral" and rep6["per_class"]["neutral"]["support"] == 0


def test_evaluate_predictions_missing(tmp_path):
    labels = write_csv(tmp_path / "labels.csv", [(f"s{i}", "happy") for i in range(10)])
    preds = write_csv(tmp_path / "pred.csv", [("s0", "happy"), ("s1", "sad")])
    with pytest.raises(ValueError, match=r"8 of 10 labelled clips have no prediction \(first: s2, s3, s4"):
        evaluate_predictions(preds, labels)
