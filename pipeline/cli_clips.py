"""``mer clips ...``: build and check clip tables."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)


@app.command()
def scan(
    dataset: Path = typer.Argument(..., help="Dataset folder (RAVDESS-style clips.csv, MER-style transcription.csv, or media files)."),
    out: Path = typer.Option(..., "--out", "-o", help="Clip table CSV to write."),
    labels_out: Path = typer.Option(None, "--labels-out", help="Also write name,discrete labels from --label-col."),
    label_col: str = typer.Option("emotion", help="Column holding the emotion, for --labels-out."),
) -> None:
    """Build a clip table (name, video, audio, text columns, metadata) from a dataset folder."""
    from mer.store.tables import write_clip_table

    from .clips import labels_from_table, scan_dataset

    table = scan_dataset(dataset)
    write_clip_table(table, out)
    typer.echo(f"wrote {len(table)} clips to {out} (columns: {', '.join(table.columns)})")
    if labels_out:
        labels_from_table(table, label_col, labels_out)
        typer.echo(f"wrote labels to {labels_out}")


@app.command("check")
def check_clips(clips: Path = typer.Argument(..., help="Clip table CSV.")) -> None:
    """Validate a clip table: unique names, media files present. Exit 1 when anything is wrong."""
    from mer.store.tables import read_clip_table

    from .clips import check_media

    table = read_clip_table(clips)
    problems = check_media(table)
    for name, problem in problems.items():
        typer.secho(f"clip {name}: {problem}", fg="red", err=True)
    typer.echo(f"{len(table)} clips, {len(problems)} with problems")
    raise typer.Exit(1 if problems else 0)
