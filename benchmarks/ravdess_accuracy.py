"""Accuracy of every fusion model on real RAVDESS features (speaker-independent).

Features (extracted once into ``--work``/features.zarr through the real stages): Whisper-base
encoder (``audio/whisper-base``), OpenFace action units (``video/openface-au``), MiniLM on the
spoken sentence (``text/minilm``; RAVDESS has two fixed sentences, so text carries almost no
emotion) and, with ``--egemaps``, the 88 eGeMAPSv02 functionals of openSMILE (``audio/egemaps``).
Two protocols:
  holdout: train on actors 1-16 (5 folds grouped by actor, for model selection and the ensemble),
           predict actors 17-20 with the fold ensemble;
  cv5:     5-fold cross-validation grouped by actor over all 20 actors (mean over folds).

Every model runs once per ``--normalize`` mode (none | global | group: z-scored per actor with each
actor's own clips, ``norm_col=actor``), ``--select`` mode (inner: the epoch is picked on a held-out
split of each fold's training actors, honest; outer: picked on the reported fold, optimistic) and
``--seeds`` seed. A standardised logistic regression (sklearn, on Whisper + AUs, and on eGeMAPS +
Whisper + AUs with ``--egemaps``) runs on the same folds with the same normalisation rule ("none"
and "global": z-scored with the training fold; "group": first z-scored per actor from each actor's
own clips, as mer does).

    python benchmarks/ravdess_accuracy.py --data ../shared/data/ravdess --work bench-out/ravdess
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess --seeds 0,1,2   # mean over 3 training seeds
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess --audio-frames --only agt,concat   # audio frames
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess-14 --seeds 0,1,2 --normalize none,group \\
        --egemaps                                                          # issue 14
    python benchmarks/ravdess_accuracy.py --work bench-out/ravdess-14 --seeds 0,1,2 --normalize none,group \\
        --select outer --only concat,agt                                   # the old, optimistic selection

Resumable: each finished (protocol, model, features, normalize, select, seed, epochs) result is a
JSON file under ``--work``/results and is not run again. One line per finished run (with its time).
Prints a table per protocol over every result stored in ``--work`` for these epochs (also
``--work``/table.md and ``--work``/results.json) and, last, ``agt_group_cv5_waf: X``,
``logreg_group_cv5_waf: X``, ``agt_holdout_waf: X`` (AGT on Whisper + AUs + text, inner selection;
the holdout figure with group normalisation when it was run, else the first ``--normalize`` mode).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mer.fusion.config import TrainConfig
from mer.fusion.data import load_features
from mer.fusion.eval import evaluate_predictions
from mer.fusion.folds import make_folds
from mer.fusion.metrics import classification_report, summarize_folds
from mer.fusion.predict import predict_run, saved_folds, write_predictions
from mer.fusion.run import train_run
from mer.pipeline.clips import labels_from_table, scan_dataset
from mer.pipeline.demo import demo_stages
from mer.pipeline.stage import StageSpec, run_stage
from mer.store import FeatureStore
from mer.store.tables import read_labels, write_clip_table

A, V, T = "audio/whisper-base", "video/openface-au", "text/minilm"
AF = "audio/whisper-frames"  # the same encoder, 20 ms frames (--audio-frames)
E = "audio/egemaps"  # openSMILE eGeMAPSv02 functionals, 88-d (--egemaps)
NAMES = {A: "Whisper", AF: "Whisper frames", V: "AUs", T: "text", E: "eGeMAPS"}
NORM_COL = "actor"  # clip-table column of the groups for --normalize group
GROUP_COL = "speaker"  # clip-table column the folds are grouped by (the actor)
PROTOCOLS = ("holdout", "cv5")
SELECT_LABEL = {"inner": "inner", "outer": "outer (optimistic)", "last": "last", "-": "-"}


def runs_for(audio: str) -> list[tuple[str, list[str]]]:
    """The models and their feature sets, with ``audio`` as the audio set."""
    return [("single", [audio]), ("single", [V]), ("single", [T]), ("concat", [audio, V, T]),
            ("attention", [audio, V, T]), ("agt", [audio, V, T]), ("logreg", [audio, V]),
            ("concat", [audio, V]), ("agt", [audio, V])]  # the last two: LogReg's inputs (no text)


EGEMAPS_RUNS = [("single", [E]), ("concat", [E, A, V]), ("agt", [E, A, V]), ("logreg", [E, A, V])]
RUNS = runs_for(A)


def modalities(feats: list[str]) -> str:
    """``Whisper+AUs+text``: the feature sets of a model, as the table shows them."""
    return "+".join(NAMES.get(k, k) for k in feats)


def add_audio_frames(clips: Path, store: Path, whisper_seconds: float) -> None:
    """Whisper-base frame-level features next to the utterance set (resumes like the others)."""
    spec = StageSpec(modality="audio", extractor="whisper-ct2", key=AF, clips=clips, store=store,
                     config={"model": "whisper-base", "input_seconds": whisper_seconds, "batch_size": 4,
                             "level": "frame"})
    report = run_stage(spec, progress=False)
    logging.info("%s: %d done, %d skipped, %d failed", AF, report.done, report.skipped, len(report.failed))


def add_egemaps(clips: Path, store: Path) -> None:
    """openSMILE eGeMAPSv02 functionals (88-d, one vector per clip), float32 (resumes: done clips are skipped)."""
    spec = StageSpec(modality="audio", extractor="opensmile", key=E, clips=clips, store=store, store_dtype="float32",
                     config={"feature_set": "eGeMAPSv02", "level": "utt"})
    report = run_stage(spec, progress=False)
    logging.info("%s: %d done, %d skipped, %d failed", E, report.done, report.skipped, len(report.failed))
    if report.failed:
        raise SystemExit(f"{E}: {len(report.failed)} clips failed")


def write_if_changed(path: Path, write) -> Path:
    """``write(tmp)`` beside ``path``, then replace ``path`` atomically, only when the bytes differ: a
    second invocation on the same ``--work`` never truncates a table a running one is reading."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    if path.is_file() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        os.replace(tmp, path)
    return path


def prepare(data: Path, work: Path, whisper_seconds: float) -> tuple[Path, Path, Path]:
    """Clip table, labels and the three feature sets (resumes: done clips are skipped)."""
    work.mkdir(parents=True, exist_ok=True)
    table = scan_dataset(data)
    clips = write_if_changed(work / "clips.csv", lambda p: write_clip_table(table, p))
    labels = write_if_changed(work / "labels.csv", lambda p: labels_from_table(table, "emotion", p))
    for spec in demo_stages(data, clips, work / "features.zarr", whisper_seconds):
        report = run_stage(spec, progress=False)
        logging.info("%s: %d done, %d skipped, %d failed", spec.key, report.done, report.skipped, len(report.failed))
    return clips, labels, work / "features.zarr"


def clip_column(clips: Path, col: str) -> dict[str, str]:
    with open(clips) as f:
        return {r["name"]: r[col] for r in csv.DictReader(f)}


def split_labels(clips: Path, labels: Path, work: Path) -> tuple[Path, Path]:
    """Labels of actors 1-16 (train) and 17-20 (test)."""
    actor = {n: int(a) for n, a in clip_column(clips, "actor").items()}
    with open(labels) as f:
        rows = list(csv.DictReader(f))
    paths = []
    for part, keep in (("train", lambda a: a <= 16), ("test", lambda a: a > 16)):
        def write(p: Path, keep=keep) -> None:
            with open(p, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["name", "discrete"])
                w.writerows((r["name"], r["discrete"]) for r in rows if keep(actor[r["name"]]))

        paths.append(write_if_changed(work / f"labels-{part}.csv", write))
    return paths[0], paths[1]


def run_key(protocol: str, model: str, feats: list[str], normalize: str, select: str, seed: int,
            epochs: int) -> str:
    """File name of one result: what identifies a run (``model`` carries a variant as ``agt[tag]``)."""
    f = "+".join(k.replace("/", "-") for k in feats)
    return f"{protocol}__{model}__{f}__{normalize}__{select}__seed{seed}__e{epochs}"


def parse_sets(items: list[str], what: str) -> dict[str, Any]:
    """``["k=v", ...]`` as a dict, values read as YAML scalars (``0.1``, ``true``, ``sine``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what}: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def train_config(args: argparse.Namespace, normalize: str, select: str, seed: int) -> TrainConfig:
    return TrainConfig(**{"epochs": args.epochs, "seed": seed, "normalize": normalize, "select": select,
                          "norm_col": NORM_COL if normalize == "group" else None, **args.train_overrides})


def run_model(protocol: str, model: str, feats: list[str], ctx: dict, runs: Path, cfg: TrainConfig,
              model_config: dict[str, Any] | None = None) -> dict:
    """One protocol's figures of one mer model with one seed, normalisation and selection."""
    store, clips = ctx["store"], ctx["clips"]
    if protocol == "holdout":
        hold = train_run(store, feats, ctx["train_labels"], runs, model=model, model_config=model_config, train=cfg,
                         folds=5, clips_csv=clips, group_col=GROUP_COL, progress=False)
        with open(ctx["test_labels"], newline="") as f:
            names = [r["name"] for r in csv.DictReader(f)]
        got, probs, classes = predict_run(runs, store, names, clips_csv=clips)
        pred, _ = write_predictions(runs / "test_predictions.csv", got, probs, classes)
        test = evaluate_predictions(pred, ctx["test_labels"])
        return {"acc": test["accuracy"], "waf": test["waf"], "train_cv_waf": hold["summary"]["waf"]["mean"],
                "selection": hold.get("selection")}
    cv = train_run(store, feats, ctx["labels"], runs, model=model, model_config=model_config, train=cfg, folds=5,
                   clips_csv=clips, group_col=GROUP_COL, progress=False)
    return {"acc": cv["summary"]["accuracy"]["mean"], "waf": cv["summary"]["waf"]["mean"],
            "waf_std": cv["summary"]["waf"]["std"], "acc_std": cv["summary"]["accuracy"]["std"],
            "oof_waf": cv["oof"]["waf"], "selection": cv.get("selection"),
            "folds_val": [val for _, val in saved_folds(runs)]}


def logreg_features(ctx: dict, feats: list[str], normalize: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(names, ``[N, D]`` concatenated features, labels) of all labelled clips; ``group``: each set
    z-scored per actor with the actor's own clips (mean and std floored like mer, no labels)."""
    labels = read_labels(ctx["labels"])
    data = load_features(FeatureStore(ctx["store"], mode="r"), feats, list(labels))
    lacking = {k: int((~p).sum()) for k, p in data.present.items() if (~p).any()}
    if lacking:
        raise SystemExit(f"logreg needs every clip in every set; lacking: {lacking}")
    # frame-level sets (--audio-frames) enter as the mean over their frames, as the baselines pool them
    x = np.concatenate([np.asarray(data.feats[k], dtype=np.float64) if data.utt[k] else
                        np.stack([f.mean(0) for f in data.feats[k]]).astype(np.float64) for k in feats], axis=1)
    if normalize == "group":
        actor = clip_column(ctx["clips"], NORM_COL)
        groups = np.array([actor[n] for n in data.names])
        for g in np.unique(groups):
            rows = groups == g
            s = x[rows].std(0)
            x[rows] = (x[rows] - x[rows].mean(0)) / np.where(s > 1e-6, s, 1.0)
    return data.names, x, [labels[n] for n in data.names]


def fit_logreg(x: np.ndarray, y: list[str], train: np.ndarray, test: np.ndarray, classes: list[str]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(x[train], [y[i] for i in train])
    return classification_report([y[i] for i in test], list(clf.predict(x[test])), classes)


def run_logreg(protocol: str, feats: list[str], normalize: str, seed: int, ctx: dict) -> dict:
    """Standardised logistic regression on the same split: holdout (actors 1-16 -> 17-20), or the
    5 folds grouped by actor that mer makes with this seed (read from a cv5 run of the seed when one
    is stored, else made the same way)."""
    names, x, y = logreg_features(ctx, feats, normalize)
    classes = sorted(set(y))
    index = {n: i for i, n in enumerate(names)}
    if protocol == "holdout":
        actor = clip_column(ctx["clips"], "actor")
        train = np.array([i for i, n in enumerate(names) if int(actor[n]) <= 16])
        test = np.array([i for i, n in enumerate(names) if int(actor[n]) > 16])
        r = fit_logreg(x, y, train, test, classes)
        return {"acc": r["accuracy"], "waf": r["waf"]}
    vals, source = ctx["folds"].get(seed), "mer cv5 run"
    if vals is None or set().union(*map(set, vals)) != set(names):
        speaker = clip_column(ctx["clips"], GROUP_COL)
        folds = make_folds(y, 5, groups=[speaker[n] for n in names], seed=seed)
        vals, source = [[names[i] for i in f.val] for f in folds], "make_folds"
    reports = []
    for val in vals:
        test = np.array(sorted(index[n] for n in val))
        train = np.setdiff1d(np.arange(len(names)), test)
        reports.append(fit_logreg(x, y, train, test, classes))
    s = summarize_folds(reports)
    return {"acc": s["accuracy"]["mean"], "waf": s["waf"]["mean"], "waf_std": s["waf"]["std"],
            "acc_std": s["accuracy"]["std"], "folds_from": source}


def load_results(work: Path) -> list[dict]:
    out = []
    for p in sorted((work / "results").glob("*.json")):
        out.append(json.loads(p.read_text()))
    return out


def summarise(results: list[dict], protocol: str) -> list[dict]:
    """One row per (model, features, normalize, select): means over seeds; WAF std over seeds
    (holdout) or over folds averaged over seeds (cv5)."""
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        if r["protocol"] == protocol:
            rows.setdefault((r["model"], r["features"], r["normalize"], r["select"]), []).append(r)
    out = []
    for (model, feats, norm, select), rs in rows.items():
        wafs = [r["waf"] for r in rs]
        std = float(np.std(wafs)) if protocol == "holdout" else float(np.mean([r["waf_std"] for r in rs]))
        out.append({"protocol": protocol, "model": model, "features": feats, "normalize": norm, "select": select,
                    "seeds": sorted(r["seed"] for r in rs), "acc": float(np.mean([r["acc"] for r in rs])),
                    "waf": float(np.mean(wafs)), "waf_std": std,
                    "minutes": float(sum(r["seconds"] for r in rs)) / 60})
    order = {m: i for i, m in enumerate(["single", "logreg", "concat", "attention", "agt"])}
    base = lambda m: m.split("[")[0]  # noqa: E731  (a variant sorts after its model)
    norms = {n: i for i, n in enumerate(["none", "global", "group"])}
    out.sort(key=lambda r: (r["normalize"] != "-", norms.get(r["normalize"], 9), "eGeMAPS" in r["features"],
                            order.get(base(r["model"]), 9), r["model"], r["features"], r["select"]))
    return out


def table_md(summary: list[dict], protocol: str) -> str:
    what = ("holdout: train actors 1-16, fold ensemble predicts actors 17-20; WAF ± std over seeds"
            if protocol == "holdout" else "cv5: 5 folds grouped by actor; WAF ± std over folds, averaged over seeds")
    lines = [f"**{what}**", "", "| model | features | normalize | select | seeds | acc | WAF |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        seeds = ",".join(map(str, r["seeds"]))
        select = SELECT_LABEL.get(r["select"], r["select"])
        lines.append(f"| {r['model']} | {r['features']} | {r['normalize']} | {select} | {seeds} | {r['acc']:.3f} "
                     f"| {r['waf']:.3f} ± {r['waf_std']:.3f} |")
    if any(r["model"] == "logreg" for r in summary):
        lines += ["", "LogReg: StandardScaler fitted on the training side in every row (so its `none` row is "
                  "z-scored with the training fold); `group` first z-scores each actor with its own clips."]
    return "\n".join(lines)


def combined_md(summaries: dict[str, list[dict]]) -> str:
    """Both protocols side by side, one row per (model, features, normalize, select)."""
    by = {p: {(r["model"], r["features"], r["normalize"], r["select"]): r for r in summaries[p]} for p in PROTOCOLS}
    keys = [(r["model"], r["features"], r["normalize"], r["select"]) for r in summaries["cv5"]]
    keys += [k for k in by["holdout"] if k not in by["cv5"]]
    lines = ["| model | features | normalize | select | holdout acc | holdout WAF | 5-fold acc | 5-fold WAF |",
             "|---|---|---|---|---|---|---|---|"]
    for k in keys:
        cells = []
        for p in PROTOCOLS:
            r = by[p].get(k)
            cells += [f"{r['acc']:.3f}", f"{r['waf']:.3f} ± {r['waf_std']:.3f}"] if r else ["", ""]
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {SELECT_LABEL.get(k[3], k[3])} | " + " | ".join(cells) + " |")
    seeds = sorted({s for p in PROTOCOLS for r in summaries[p] for s in r["seeds"]})
    lines += ["", f"Seeds {','.join(map(str, seeds))} unless a row says otherwise in the tables per protocol."]
    return "\n".join(lines)


def pick(summary: list[dict], model: str, features: str, normalize: str, select: str) -> dict | None:
    for r in summary:
        if (r["model"], r["features"], r["normalize"], r["select"]) == (model, features, normalize, select):
            return r
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/ravdess"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/ravdess"))
    ap.add_argument("--whisper-seconds", type=float, default=0.0, help="0: trimmed input; 30: native padding")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--only", default="", help="comma-separated model names to run (single, logreg, concat, "
                                               "attention, agt; default all)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds; the table is the mean over them")
    ap.add_argument("--normalize", default="global", help="comma-separated: none, global, group (per actor)")
    ap.add_argument("--select", default="inner", help="comma-separated: inner (honest), outer (optimistic), last")
    ap.add_argument("--protocols", default="holdout,cv5", help="comma-separated: holdout, cv5")
    ap.add_argument("--egemaps", action="store_true",
                    help="also extract openSMILE eGeMAPSv02 (audio/egemaps) and add its rows: single, "
                         "concat and AGT on eGeMAPS + Whisper + AUs, LogReg on the same")
    ap.add_argument("--audio-frames", action="store_true",
                    help="audio as Whisper frames (20 ms) instead of the utterance mean: the AGT attends over them, "
                         "the baselines mean-pool them")
    ap.add_argument("--model-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the mer models' config (e.g. dropout=0.3); needs --tag")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field (e.g. refit=true, weight_decay=0.1); needs --tag")
    ap.add_argument("--tag", default="", help="name of this variant: its rows read model[tag] (ablations)")
    args = ap.parse_args()
    args.model_overrides = parse_sets(args.model_set, "--model-set")
    args.train_overrides = parse_sets(args.train_set, "--train-set")
    if (args.model_overrides or args.train_overrides) and not args.tag:
        ap.error("--model-set/--train-set need --tag (the variant's name in the tables and result files)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    normalizes = args.normalize.split(",")
    selects = args.select.split(",")
    protocols = args.protocols.split(",")
    for n in normalizes:
        if n not in ("none", "global", "group"):
            ap.error(f"--normalize: unknown mode {n!r}")
    for s in selects:
        if s not in ("inner", "outer", "last"):
            ap.error(f"--select: unknown mode {s!r}")
    for p in protocols:
        if p not in PROTOCOLS:
            ap.error(f"--protocols: unknown protocol {p!r}")
    t_start = time.time()
    clips, labels, store = prepare(args.data, args.work, args.whisper_seconds)
    train_labels, test_labels = split_labels(clips, labels, args.work)
    runs_list = RUNS
    if args.audio_frames:
        add_audio_frames(clips, store, args.whisper_seconds)
        runs_list = runs_for(AF)
    if args.egemaps:
        add_egemaps(clips, store)
        runs_list = runs_list + EGEMAPS_RUNS
    logging.info("features ready after %.0f s", time.time() - t_start)
    seeds = [int(x) for x in args.seeds.split(",")]
    wanted = set(args.only.split(",")) if args.only else None
    ctx = {"store": store, "clips": clips, "labels": labels, "train_labels": train_labels,
           "test_labels": test_labels, "folds": {}}
    results_dir = args.work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for r in load_results(args.work):  # the folds mer made per seed, for LogReg on the same folds
        if r["protocol"] == "cv5" and r.get("folds_val") and r["epochs"] == args.epochs:
            ctx["folds"].setdefault(r["seed"], r["folds_val"])
    todo = []
    for seed in seeds:
        for norm in normalizes:
            for select in selects:
                for model, feats in runs_list:
                    if wanted and model not in wanted:
                        continue
                    sel = "-" if model == "logreg" else select
                    if model == "logreg" and select != selects[0]:
                        continue  # no epochs to pick: one LogReg per normalisation
                    for protocol in protocols:
                        todo.append((seed, norm, sel, model, feats, protocol))
    # mer models before LogReg within a seed, so LogReg reads the folds of that seed's cv5 runs
    todo.sort(key=lambda t: (seeds.index(t[0]), t[3] == "logreg"))
    n_run = 0
    for i, (seed, norm, sel, model, feats, protocol) in enumerate(todo, 1):
        tagged = f"{model}[{args.tag}]" if args.tag and model != "logreg" else model
        key = run_key(protocol, tagged, feats, norm, sel, seed, args.epochs)
        path = results_dir / f"{key}.json"
        if path.exists():
            continue
        t0 = time.time()
        if model == "logreg":
            res = run_logreg(protocol, feats, norm, seed, ctx)
        else:
            runs = args.work / f"runs-e{args.epochs}" / key
            res = run_model(protocol, model, feats, ctx, runs, train_config(args, norm, sel, seed),
                            args.model_overrides or None)
            if protocol == "cv5":
                ctx["folds"].setdefault(seed, res["folds_val"])
        secs = time.time() - t0
        row = {"protocol": protocol, "model": tagged, "features": modalities(feats), "feature_keys": feats,
               "normalize": norm, "select": sel, "seed": seed, "epochs": args.epochs, "seconds": secs,
               "model_overrides": args.model_overrides if tagged != model else {},
               "train_overrides": args.train_overrides if tagged != model else {}, **res}
        path.write_text(json.dumps(row, indent=1))
        n_run += 1
        std = f" ± {res['waf_std']:.3f}" if "waf_std" in res else ""
        print(f"[{i}/{len(todo)}] {protocol} {tagged} {modalities(feats)} normalize={norm} select={sel} seed={seed}: "
              f"acc {res['acc']:.3f} WAF {res['waf']:.3f}{std} ({secs:.0f} s; {(time.time() - t_start) / 60:.1f} min "
              "elapsed)", flush=True)
    print(f"{n_run} runs done now, {len(todo) - n_run} of the {len(todo)} asked were stored already; "
          f"{(time.time() - t_start) / 60:.1f} min", flush=True)

    results = [r for r in load_results(args.work) if r["epochs"] == args.epochs]
    summaries = {p: summarise(results, p) for p in PROTOCOLS}
    md = []
    for p in PROTOCOLS:
        if summaries[p]:
            md.append(table_md(summaries[p], p))
    if summaries["cv5"] or summaries["holdout"]:
        md.append("**both protocols**\n\n" + combined_md(summaries))
    text = "\n\n".join(md)
    print(text)
    (args.work / "table.md").write_text(text + "\n")
    (args.work / "results.json").write_text(json.dumps({"epochs": args.epochs, "summary": summaries,
                                                         "runs": [{k: v for k, v in r.items() if k != "folds_val"}
                                                                  for r in results]}, indent=1))
    main_feats = modalities([AF if args.audio_frames else A, V, T])
    lr_feats = modalities([AF if args.audio_frames else A, V])
    agt_cv = pick(summaries["cv5"], "agt", main_feats, "group", "inner")
    lr_cv = pick(summaries["cv5"], "logreg", lr_feats, "group", "-")
    hold_norm = "group" if "group" in normalizes else normalizes[0]
    agt_hold = pick(summaries["holdout"], "agt", main_feats, hold_norm, "inner")
    fmt = lambda r: f"{r['waf']:.3f}" if r else "n/a"  # noqa: E731
    print(f"agt_group_cv5_waf: {fmt(agt_cv)}")
    print(f"logreg_group_cv5_waf: {fmt(lr_cv)}")
    print(f"agt_holdout_waf: {fmt(agt_hold)}")


if __name__ == "__main__":
    main()
