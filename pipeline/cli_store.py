"""``mer store ...``: inspect, check, import and export feature stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)
import_app = typer.Typer(no_args_is_help=True, help="Import features computed elsewhere.")
export_app = typer.Typer(no_args_is_help=True, help="Export feature sets to HDF5 or per-clip .npy.")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")

STORE_OPT = typer.Option(..., "--store", "-s", help="Feature store directory (created if missing).")
SET_OPT = typer.Option(..., "--set", help="Feature set key <modality>/<name>, e.g. video/openface-au.")
FORCE_OPT = typer.Option(False, "--force", help="Start the feature set anew if it exists with another provenance.")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def print_info(store_path: Path) -> int:
    """Print the table of ``mer store info``; returns the number of sets."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from mer.store import FeatureStore
    from mer.store.info import describe_store

    rows = describe_store(FeatureStore(store_path, mode="r"))
    table = Table(title=f"feature store {store_path}")
    for col in ("set", "level", "clips", "dim", "dtype", "size", "extractor / model", "failed", "pending"):
        table.add_column(col, justify="right" if col in ("clips", "dim", "size", "failed", "pending") else "left")
    for r in rows:
        clips = f"{r['clips']}" + (f" ({r['frames']} frames)" if r["frames"] is not None else "")
        model = f"{r['extractor']} / {Path(r['model']).name if r['model'] else '-'}"
        table.add_row(r["set"], r["level"], clips, str(r["dim"]), r["dtype"], _human(r["bytes"]), model,
                      str(r["failures"]), str(r["pending_segments"]))
    import sys

    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(table)
    for r in rows:
        ft = r.get("finetune")
        if ft:
            trained = ft.get("trained_on") or {}
            digest = str(trained.get("sha256", "")).removeprefix("sha256:")[:12]
            console.print(f"[cyan]{r['set']}[/]: model fine-tuned ({ft.get('task', '?')}) from {ft.get('base_model')} "
                          f"on {trained.get('count', '?')} clips (names {digest}), "
                          f"classes {','.join(ft.get('classes') or [])}")
        if r.get("extras") or r.get("frame_extras"):
            console.print(f"[cyan]{r['set']}[/]: per clip: {', '.join(r.get('extras') or []) or '-'}; "
                          f"per frame: {', '.join(r.get('frame_extras') or []) or '-'}")
        for name, reason in list(r["failed"].items())[:10]:
            console.print(f"[yellow]{r['set']}[/]: clip {escape(name)} failed: {escape(reason)}")
        if r["failures"] > 10:
            console.print(f"[yellow]{r['set']}[/]: ... and {r['failures'] - 10} more failures")
    return len(rows)


@app.command()
def info(
    store: Path = typer.Argument(..., help="Feature store directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Table of the store's feature sets: clips, dims, level, dtype, bytes, provenance, failures."""
    if as_json:
        from mer.store import FeatureStore
        from mer.store.info import describe_store

        typer.echo(json.dumps(describe_store(FeatureStore(store, mode="r")), indent=2, default=str))
        return
    print_info(store)


@app.command()
def check(
    store: Path = typer.Argument(..., help="Feature store directory."),
    fix: bool = typer.Option(False, "--fix", help="Consolidate pending segments, cut unfinished appends, "
                             "un-mark clips whose data is missing so a rerun redoes them (= `mer store repair`)."),
    sets: list[str] = typer.Option(None, "--set", help="Only these sets (repeatable)."),
) -> None:
    """Verify ledger against data (lengths, offsets, names, NaN/Inf); exit 1 when problems remain."""
    from mer.store import FeatureStore
    from mer.store.check import check_store

    problems = check_store(FeatureStore(store, mode="a" if fix else "r"), sets or None, repair=fix)
    for p in problems:
        typer.secho(str(p), fg="green" if p.fixed else "red", err=True)
    left = [p for p in problems if not p.fixed]
    typer.echo(f"{len(problems)} problems found, {len(problems) - len(left)} fixed, {len(left)} remaining")
    raise typer.Exit(1 if left else 0)


@app.command()
def repair(
    store: Path = typer.Argument(..., help="Feature store directory."),
    sets: list[str] = typer.Option(None, "--set", help="Only these sets (repeatable)."),
) -> None:
    """Make the ledger match the data: merge pending segments, cut unfinished appends, and drop every
    clip whose data is missing (lost array or chunk, NaN/Inf vectors) so a rerun redoes it.

    Exit 0 when the store checks clean afterwards, 1 when problems remain that need a person.
    """
    from mer.store import FeatureStore
    from mer.store.check import check_store

    FeatureStore(store, mode="r")  # a missing store is an error, not an empty new one
    fs = FeatureStore(store, mode="a")
    before = {key: _names_or_none(fs, key) for key in (sets or fs.sets())}
    problems = check_store(fs, sets or None, repair=True)
    for p in problems:
        typer.secho(str(p), fg="green" if p.fixed else "red", err=True)
    for key, names in before.items():
        dropped = sorted(names - set(fs[key].names()))
        if dropped:
            shown = ", ".join(dropped[:20]) + (f", ... ({len(dropped)} in all)" if len(dropped) > 20 else "")
            typer.echo(f"{key}: dropped {len(dropped)} clips whose data was missing (a rerun redoes them): {shown}")
    left = check_store(FeatureStore(store, mode="r"), sets or None)
    for p in left:
        typer.secho(f"still wrong: {p}", fg="red", err=True)
    typer.echo(f"{len(problems)} problems found, {sum(p.fixed for p in problems)} fixed, {len(left)} remaining")
    raise typer.Exit(1 if left else 0)


def _names_or_none(store, key: str) -> set[str]:
    """Committed clips of a set; empty when its names array itself is gone."""
    try:
        return set(store[key].names())
    except (KeyError, FileNotFoundError):
        return set()


def _report(reports: list) -> None:
    failed = 0
    for r in reports:
        typer.echo(f"{r.key}: {r.written} written, {r.skipped} already done, {len(r.failed)} failed")
        for name, reason in r.failed.items():
            typer.secho(f"  clip {name}: {reason}", fg="red", err=True)
        failed += len(r.failed)
    if failed:
        raise typer.Exit(1)


@import_app.command("npy")
def import_npy(
    folder: Path = typer.Argument(..., help="MERTools-style folder of <name>.npy files."),
    store: Path = STORE_OPT,
    set_key: str = SET_OPT,
    level: str = typer.Option("auto", help="utt, frame or auto (1-D files: utt, 2-D: frame)."),
    dtype: str = typer.Option("float16", help="Stored dtype: float16 or float32."),
    fps: float = typer.Option(None, help="Frame rate of frame-level files, to record timestamps."),
    force: bool = FORCE_OPT,
) -> None:
    """Import per-clip .npy files as one feature set."""
    from mer.store import FeatureStore
    from mer.store.io_npy import import_npy_folder

    _report([import_npy_folder(FeatureStore(store), set_key, folder, level=level, dtype=dtype, fps=fps, force=force)])


@import_app.command("csv")
def import_csv(
    csv_path: Path = typer.Argument(..., help="CSV with a name column and numeric feature columns."),
    store: Path = STORE_OPT,
    set_key: str = SET_OPT,
    name_col: str = typer.Option("name", help="Column holding clip names."),
    columns: str = typer.Option(None, help="Comma-separated feature columns (default: all but the name)."),
    only: Path = typer.Option(None, "--only", help="Import only the clips named in this CSV/text file."),
    dtype: str = typer.Option("float32", help="Stored dtype: float16 or float32."),
    force: bool = FORCE_OPT,
) -> None:
    """Import a CSV of precomputed per-clip features (e.g. OpenFace action units)."""
    from mer.store import FeatureStore
    from mer.store.io_csv import import_csv_features
    from mer.store.tables import read_names

    cols = [c.strip() for c in columns.split(",")] if columns else None
    names = read_names(only) if only else None
    _report([import_csv_features(FeatureStore(store), set_key, csv_path, name_col=name_col, columns=cols,
                                 dtype=dtype, force=force, names=names)])


@import_app.command("h5")
def import_h5_cmd(
    h5_path: Path = typer.Argument(..., help="HDF5 file written by `mer store export h5`."),
    store: Path = STORE_OPT,
    force: bool = FORCE_OPT,
) -> None:
    """Import every feature set of an HDF5 export."""
    from mer.store import FeatureStore
    from mer.store.io_h5 import import_h5

    _report(import_h5(FeatureStore(store), h5_path, force=force))


@export_app.command("h5")
def export_h5_cmd(
    store: Path = typer.Argument(..., help="Feature store directory."),
    out: Path = typer.Argument(..., help="HDF5 file to write."),
    sets: list[str] = typer.Option(None, "--set", help="Only these sets (repeatable; default all)."),
) -> None:
    """Export feature sets to one HDF5 file."""
    from mer.store import FeatureStore
    from mer.store.io_h5 import export_h5

    keys = export_h5(FeatureStore(store, mode="r"), out, sets or None)
    typer.echo(f"wrote {len(keys)} sets to {out}")


@export_app.command("npy")
def export_npy_cmd(
    store: Path = typer.Argument(..., help="Feature store directory."),
    out: Path = typer.Argument(..., help="Folder for <name>.npy files."),
    set_key: str = SET_OPT,
) -> None:
    """Export one feature set as MERTools-style per-clip .npy files."""
    from mer.store import FeatureStore
    from mer.store.io_npy import export_npy_folder

    n = export_npy_folder(FeatureStore(store, mode="r"), set_key, out)
    typer.echo(f"wrote {n} files to {out}")
