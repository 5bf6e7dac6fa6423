"""``mer fuse selftrain`` and ``mer fuse vote``, and the priors report of ``mer fuse predict``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

selftrain_commands = typer.Typer(no_args_is_help=True)


def _class_values(pairs: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: expected class=number") from None
        if not sep:
            raise typer.BadParameter(f"{pair!r}: expected class=number")
    return out


def report_priors(fix, out: Path) -> None:
    """Print estimated priors next to the training priors; write ``<stem>_priors.json`` and a PNG."""
    from rich.console import Console
    from rich.table import Table

    from mer.fusion.selftrain_plots import plot_priors

    summary = fix.as_dict()
    table = Table(title=f"label shift ({fix.method}): priors over {summary['n']} clips")
    for col in ("class", "training", "estimated", "predicted before", "predicted after"):
        table.add_column(col, justify="left" if col == "class" else "right")
    before, after = summary["predicted_before"] or {}, summary["predicted_after"] or {}
    for i, c in enumerate(fix.classes):
        table.add_row(c, f"{fix.train_priors[i]:.3f}", f"{fix.priors[i]:.3f}", f"{before.get(c, 0):.3f}",
                      f"{after.get(c, 0):.3f}")
    Console(width=120).print(table)
    stem = Path(out).with_name(Path(out).stem + "_priors")
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot_priors(fix.classes, {"training": list(fix.train_priors), f"estimated ({fix.method})": list(fix.priors)},
                stem.with_suffix(".png"), title="class priors: training vs estimated on the predicted clips")
    typer.echo(f"priors -> {stem.with_suffix('.json')}, {stem.with_suffix('.png')}")


@selftrain_commands.command()
def selftrain(
    run: Path = typer.Option(..., "--run", "-r", help="Supervised base run (`mer fuse train`)."),
    store: Path = typer.Option(..., "--store", "-s", help="Store holding the run's sets for labelled and pool clips."),
    pool: Path = typer.Option(..., "--pool", "-p", help="Unlabelled clip names (CSV with a name column, or TXT)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: round1, round2 ..., selftrain.json/png."),
    rounds: int = typer.Option(3, "--rounds", "-k", help="Self-training rounds after the base run."),
    threshold: float = typer.Option(0.9, "--threshold", help="Keep a pool clip when its top probability reaches this."),
    class_threshold: list[str] = typer.Option(None, "--class-threshold", help="Per-class threshold class=value (repeatable)."),
    top_k: int = typer.Option(0, "--top-k", help="At most this many pseudo-labels per class, most confident first (0: no cap)."),
    source: str = typer.Option("fold", "--source", help="fold (leak-free validation) or ensemble (fold average)."),
    agreement: bool = typer.Option(False, "--agreement", help="Ensemble source: every fold model must agree."),
    prior_correction: str = typer.Option("none", "--prior-correction",
                                         help="Correct the pool posteriors for label shift before selecting: none, em, bbse."),
    patience: int = typer.Option(1, "--patience", help="Stop after this many rounds without a better out-of-fold WAF."),
    labels: Path = typer.Option(None, "--labels", "-l", help="Labels of the base run (default: the path in its config)."),
    pool_labels: Path = typer.Option(None, "--pool-labels", help="True pool labels, only to report pseudo-label accuracy."),
    device: str = typer.Option(None, "--device", help="Training device (default: the base run's)."),
    clips: Path = typer.Option(None, "--clips", help="Clip table with the group column of a run normalised per "
                               "group, for labelled and pool clips (default: the base run's)."),
) -> None:
    """Rounds of pseudo-labelling the pool and retraining; `mer fuse predict --run OUT` uses the best round."""
    from mer.fusion.selftrain import SelfTrainConfig, run_selftrain
    from mer.store.tables import read_labels, read_names

    cfg = SelfTrainConfig(rounds=rounds, threshold=threshold, class_thresholds=_class_values(class_threshold),
                          top_k=top_k, source=source, agreement=agreement, prior_correction=prior_correction,
                          patience=patience)
    truth = read_labels(pool_labels) if pool_labels else None
    summary = run_selftrain(run, store, read_names(pool), out, cfg, labels_csv=labels, pool_labels=truth,
                            device=device, clips_csv=clips)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"self-training over {summary['pool']} pool clips (best: round {summary['best_round']})")
    for col in ("round", "pseudo-labels", "out-of-fold WAF", "fold WAF", "pool predicted (top 3)"):
        table.add_column(col, justify="right")
    for row in summary["rounds"]:
        dist = row.get("pool_predicted", {})
        top = ", ".join(f"{c} {v:.2f}" for c, v in sorted(dist.items(), key=lambda kv: -kv[1])[:3])
        table.add_row(str(row["round"]), f"{sum(row['pseudo_per_class'].values()):.0f}", f"{row['oof_waf']:.4f}",
                      f"{row['fold_waf']['mean']:.4f} ± {row['fold_waf']['std']:.4f}", top)
    Console(width=140).print(table)
    typer.echo(f"self-training written to {out} (selftrain.json, selftrain.png)")


@selftrain_commands.command("vote")
def vote_cmd(
    predictions: list[Path] = typer.Argument(..., help="predictions.csv files (probabilities beside them) or *_probs.csv."),
    out: Path = typer.Option(..., "--out", "-o", help="Voted predictions.csv (name,discrete)."),
    method: str = typer.Option("majority", "--method", help="majority (ties by mean probability), mean "
                               "(probabilities) or weighted (weights fitted on the --runs' out-of-fold predictions)."),
    runs: list[Path] = typer.Option(None, "--runs", help="weighted: the run behind each predictions file, in the "
                                    "same order (repeatable); their oof_predictions.csv choose the weights."),
) -> None:
    """Combine several runs' or rounds' predictions by majority vote or (weighted) probability averaging."""
    from mer.fusion.predict import write_predictions

    if method == "weighted":
        from mer.fusion.weighting import weighted_vote

        weights_json = out.with_name(out.stem + "_weights.json")
        names, discrete, mean, classes, report = weighted_vote(predictions, runs or [], weights_json)
        pred, prob = write_predictions(out, names, mean, classes, discrete)
        shown = ", ".join(f"{r}: {w:.3f}" for r, w in zip(report["runs"], report["weights"]))
        typer.echo(f"weights (out-of-fold log-loss {report['oof']['weighted']['log_loss']:.4f}, equal weights "
                   f"{report['oof']['equal']['log_loss']:.4f}): {shown} -> {weights_json}")
        typer.echo(f"{len(names)} weighted predictions -> {pred} (probabilities: {prob})")
        return
    if runs:
        raise typer.BadParameter("--runs goes with --method weighted")
    from mer.fusion.vote import vote

    names, discrete, mean, classes = vote(predictions, method)
    pred, prob = write_predictions(out, names, mean, classes, discrete)
    typer.echo(f"{len(names)} voted predictions ({method} over {len(predictions)} files) -> {pred}"
               + (f" (mean probabilities: {prob})" if prob else ""))
