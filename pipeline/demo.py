"""The end-to-end demo on the bundled RAVDESS sample (``mer demo`` / ``make demo``).

Steps: build the clip table and labels; fill a feature store through the same extraction stages
users run — real OpenFace action units (``table``), real pretrained Whisper-base speech features
(``whisper-ct2``) and MiniLM subtitle features (``sentence``); check the store and print its
summary; train the Audio-Guided Transformer with 4 folds grouped by speaker and print its metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mer

log = logging.getLogger(__name__)


def default_data() -> Path:
    """The bundled sample: ``examples/ravdess`` next to the package sources."""
    return Path(mer.__file__).resolve().parent / "examples" / "ravdess"


def demo_stages(data: Path, clips_csv: Path, store: Path, whisper_seconds: float) -> list:
    """The three extraction stages of the demo, as :class:`StageSpec` objects."""
    from .inputs import DecodeSettings
    from .stage import StageSpec

    common = dict(clips=clips_csv, store=store)
    return [
        StageSpec(modality="video", extractor="table", key="video/openface-au", store_dtype="float32",
                  config={"model": str(data / "openface_au.csv")}, **common),
        StageSpec(modality="audio", extractor="whisper-ct2", key="audio/whisper-base",
                  config={"model": "whisper-base", "input_seconds": whisper_seconds, "batch_size": 4}, **common),
        StageSpec(modality="text", extractor="sentence", key="text/minilm",
                  config={"model": "all-MiniLM-L6-v2"}, decode=DecodeSettings(text_column="text"), **common),
    ]


def run_demo(out: Path, data: Path | None = None, whisper_seconds: float = 0.0) -> int:
    """Run the demo into ``out``; returns the process exit code (0 when every step succeeded)."""
    from rich.console import Console

    from mer.store import FeatureStore
    from mer.store.check import check_store
    from mer.store.tables import read_labels, write_clip_table

    from .cli_store import print_info
    from .clips import labels_from_table, scan_dataset
    from .report import print_report
    from .stage import run_stage

    console = Console()
    data = Path(data) if data else default_data()
    if not (data / "clips.csv").is_file():
        console.print(f"[red]demo data not found at {data}; pass --data to a RAVDESS-style folder[/]")
        return 1
    out.mkdir(parents=True, exist_ok=True)

    console.rule("1. clip table")
    table = scan_dataset(data)
    clips_csv = write_clip_table(table, out / "clips.csv")
    labels_csv = labels_from_table(table, "emotion", out / "labels.csv")
    labels = read_labels(labels_csv)
    speakers = sorted(set(table.column("speaker").values()), key=int)
    console.print(f"{len(table)} clips, {len(set(labels.values()))} emotions, {len(speakers)} speakers -> "
                  f"{clips_csv}, {labels_csv}")

    failed = 0
    for i, spec in enumerate(demo_stages(data, clips_csv, out / "features.zarr", whisper_seconds), start=2):
        console.rule(f"{i}. mer extract {spec.modality} --extractor {spec.extractor} -> {spec.key}")
        report = run_stage(spec)
        print_report(report)
        failed += len(report.failed)

    console.rule("5. store")
    store = FeatureStore(out / "features.zarr")
    problems = check_store(store)
    for p in problems:
        console.print(f"[red]{p}[/]")
    print_info(store.path)

    console.rule("6. mer fuse train --model agt --folds 4 --group-col speaker")
    from mer.fusion.config import TrainConfig
    from mer.fusion.run import train_run

    keys = [spec.key for spec in demo_stages(data, clips_csv, store.path, whisper_seconds)]
    audio_first = sorted(keys, key=lambda k: not k.startswith("audio/"))
    metrics = train_run(store.path, audio_first, labels_csv, out / "runs" / "agt", model="agt",
                        train=TrainConfig(epochs=40), folds=4, clips_csv=clips_csv, group_col="speaker")
    print_metrics(console, metrics, out / "runs" / "agt")
    return 1 if (problems or failed) else 0


def print_metrics(console, metrics: dict, run_dir: Path) -> None:
    """Per-fold and mean metrics of a run, and where its plots are."""
    from rich.table import Table

    table = Table(title=f"{metrics['model']} on {', '.join(metrics['features'])} (speaker-independent folds)")
    for col in ("fold", "train", "val", "best epoch", "accuracy", "WAF"):
        table.add_column(col, justify="right")
    for f in metrics["folds"]:
        table.add_row(str(f["fold"]), str(f["n_train"]), str(f["n_val"]), str(f["best_epoch"]),
                      f"{f['accuracy']:.3f}", f"{f['waf']:.3f}")
    s = metrics["summary"]
    table.add_row("mean ± std", "", "", "", f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}",
                  f"{s['waf']['mean']:.3f} ± {s['waf']['std']:.3f}")
    console.print(table)
    console.print(f"chance: {1 / len(metrics['oof']['per_class']):.3f}; plots: {run_dir / 'confusion.png'}, "
                  f"{run_dir / 'learning_curves.png'}")
