"""``mer fuse ...``: train, predict, evaluate and compare fusion models on stored features."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


def _kv(pairs: list[str] | None) -> dict:
    """``["width=256", "fusion=concat"]`` -> typed dict (ints, floats, bools, strings)."""
    out: dict = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r}: expected key=value")
        low = raw.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(raw)
            except ValueError:
                try:
                    out[key] = float(raw)
                except ValueError:
                    out[key] = raw
    return out


@app.command()
def train(
    config: Path = typer.Option(None, "--config", "-c", help="Run file (YAML/JSON) with any of the settings below, "
                                "e.g. a finished run's run.yaml or config.json to replay it. Precedence: preset < "
                                "run file < command line (options given explicitly)."),
    preset: str = typer.Option(None, "--preset", "-P", help="Named model + training settings (mer fuse presets)."),
    store: Path = typer.Option(None, "--store", "-s", help="Feature store."),
    features: str = typer.Option(None, "--features", "-f", help="Comma-separated set keys: audio/A,video/V,text/T."),
    labels: Path = typer.Option(None, "--labels", "-l", help="Labels CSV name,discrete."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (runs/NAME)."),
    model: str = typer.Option(None, "--model", "-m", help="agt, concat, attention or single (default agt)."),
    folds: int = typer.Option(None, "--folds", "-k", help="k of k-fold cross-validation (default 5)."),
    clips: Path = typer.Option(None, "--clips", help="Clip table holding --group-col and --norm-col."),
    group_col: str = typer.Option(None, "--group-col", help="Grouped folds by this clip-table column (speaker)."),
    normalize: str = typer.Option(None, "--normalize", help="Feature z-scoring: none, global (training fold's "
                                  "statistics) or group (each --norm-col group's own clips, labels never used). "
                                  "Default: group with --norm-col, else global."),
    norm_col: str = typer.Option(None, "--norm-col", help="Clip-table column of the normalisation groups (speaker)."),
    min_group: int = typer.Option(None, "--min-group", help="Smaller groups use the global statistics (default 8)."),
    val: Path = typer.Option(None, "--val", help="Fixed validation clips (CSV/TXT) instead of k-fold."),
    option: list[str] = typer.Option(None, "--option", "-O", help="Model config key=value (repeatable)."),
    train_option: list[str] = typer.Option(None, "--train", "-T", help="Training key=value, e.g. -T epochs=80."),
    seed: int = typer.Option(None, "--seed", help="Seed of folds, initialisation and batch order (default 0)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default cpu)."),
    classes: str = typer.Option(None, "--classes", help="The label set, in output order (a label outside it is "
                                "an error): e.g. mer for the MER classes, or neutral,angry,happy,... "
                                "Default: the sorted labels found."),
) -> None:
    """k-fold training on stored features; writes config, run.yaml, checkpoints, metrics.json and plots."""
    from mer.fusion.runfile import train_from_options

    named = {"seed": seed, "device": device, "normalize": normalize, "norm_col": norm_col, "min_group": min_group}
    options = {"store": store, "features": features, "labels": labels, "out": out, "model": model, "folds": folds,
               "clips": clips, "group_col": group_col, "val": val, "classes": classes,
               "model_config": _kv(option), "train": {**_kv(train_option), **{k: v for k, v in named.items()
                                                                               if v is not None}}}
    spec, metrics = train_from_options(config, preset, options)
    s = metrics["summary"]
    typer.echo(f"{spec.model} on {', '.join(spec.features)}: {len(metrics['folds'])} folds")
    typer.echo(f"WAF {s['waf']['mean']:.4f} ± {s['waf']['std']:.4f}   accuracy {s['accuracy']['mean']:.4f} ± "
               f"{s['accuracy']['std']:.4f}   out-of-fold WAF {metrics['oof']['waf']:.4f}")
    typer.echo(f"run written to {spec.out} (replay: mer fuse train --config {spec.out / 'run.yaml'} --out NEW_DIR)")


@app.command()
def presets(
    as_json: bool = typer.Option(False, "--json", help="Print the presets as JSON."),
) -> None:
    """The named presets of `mer fuse train --preset NAME`: model, config and training overrides."""
    from mer.fusion.presets import preset_rows

    rows = preset_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        opts = " ".join([*(f"-O {k}={v}" for k, v in row["model_config"].items()),
                         *(f"-T {k}={v}" for k, v in row["train"].items())])
        typer.echo(f"{row['name']}  (model {row['model']})\n  {row['description']}\n  {opts}\n")


@app.command()
def predict(
    run: Path = typer.Option(..., "--run", "-r", help="Run directory from `mer fuse train` (or selftrain: its best round)."),
    store: Path = typer.Option(..., "--store", "-s", help="Feature store with the run's sets."),
    names: Path = typer.Option(None, "--names", help="Clips to predict (CSV/TXT); default every clip in the sets."),
    clips: Path = typer.Option(None, "--clips", help="Clip table with the group column of a run normalised per "
                               "group: each group's statistics come from its own clips being predicted."),
    out: Path = typer.Option(..., "--out", "-o", help="predictions.csv (name,discrete); probabilities beside it."),
    prior_correction: str = typer.Option("none", "--prior-correction",
                                         help="Label-shift correction of the posteriors: none, em, bbse, given."),
    priors: str = typer.Option(None, "--priors", help="Known test priors for `given`: neutral=0.2,happy=0.3,..."),
    device: str = typer.Option("cpu", "--device"),
    models: str = typer.Option("auto", "--models", help="auto (the final model when the run trained one with "
                               "-T final=true, else the fold average), final, or folds."),
) -> None:
    """The run's final model or fold ensemble over stored features, optionally corrected for label shift."""
    from mer.fusion.predict import predict_corrected, write_predictions
    from mer.store.tables import read_names

    clip_names = read_names(names) if names else None
    got, fix = predict_corrected(run, store, clip_names, prior_correction, priors, device, clips_csv=clips,
                                 use=models)
    pred, prob = write_predictions(out, got, fix.probs, fix.classes)
    typer.echo(f"{len(got)} predictions -> {pred} (probabilities: {prob})")
    if prior_correction != "none":
        from .cli_selftrain import report_priors

        report_priors(fix, out)


@app.command("eval")
def evaluate(
    pred: Path = typer.Option(..., "--pred", "-p", help="predictions.csv (name,discrete)."),
    labels: Path = typer.Option(..., "--labels", "-l", help="Labels CSV (name,discrete)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Accuracy, WAF and a per-class table of a predictions file."""
    from rich.console import Console
    from rich.table import Table

    from mer.fusion.eval import evaluate_predictions

    rep = evaluate_predictions(pred, labels)
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    table = Table(title=f"{pred}: accuracy {rep['accuracy']:.4f}  WAF {rep['waf']:.4f}  macro F1 {rep['macro_f1']:.4f}")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls, r in rep["per_class"].items():
        table.add_row(cls, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    Console().print(table)


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories."),
    plot: Path = typer.Option(None, "--plot", help="Also write a bar chart of WAF per run (PNG)."),
) -> None:
    """One table of several runs side by side (mean ± std over folds, out-of-fold WAF)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fusion runs")
    for col in ("run", "model", "features", "folds", "WAF", "accuracy", "OOF WAF"):
        table.add_column(col)
    wafs = {}
    for r in runs:
        m = json.loads((r / "metrics.json").read_text())
        s = m["summary"]
        wafs[r.name] = s["waf"]["mean"]
        table.add_row(r.name, m["model"], ", ".join(m["features"]), str(len(m["folds"])),
                      f"{s['waf']['mean']:.4f} ± {s['waf']['std']:.4f}",
                      f"{s['accuracy']['mean']:.4f} ± {s['accuracy']['std']:.4f}", f"{m['oof']['waf']:.4f}")
    Console(width=160).print(table)
    if plot:
        from mer.fusion.plots import plot_bars

        plot_bars(wafs, plot, ylabel="WAF (mean over folds)", title="fusion runs")
        typer.echo(f"wrote {plot}")
