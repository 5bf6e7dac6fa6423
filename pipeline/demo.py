"""The end-to-end demo on the bundled RAVDESS sample (``mer demo`` / ``make demo``).

Current steps: build the clip table and labels, import the real OpenFace action units as the
visual feature set, check the store and print its summary. Later stages (extraction, fusion)
extend this function as they land.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mer

log = logging.getLogger(__name__)


def default_data() -> Path:
    """The bundled sample: ``examples/ravdess`` next to the package sources."""
    return Path(mer.__file__).resolve().parent / "examples" / "ravdess"


def run_demo(out: Path, data: Path | None = None) -> int:
    """Run the demo into ``out``; returns the process exit code (0 when every step succeeded)."""
    from rich.console import Console

    from mer.store import FeatureStore
    from mer.store.check import check_store
    from mer.store.io_csv import import_csv_features
    from mer.store.tables import read_labels, write_clip_table

    from .cli_store import print_info
    from .clips import labels_from_table, scan_dataset

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

    console.rule("2. visual features: OpenFace action units -> store")
    store = FeatureStore(out / "features.zarr")
    report = import_csv_features(store, "video/openface-au", data / "openface_au.csv", names=table.names)
    console.print(f"video/openface-au: {report.written} written, {report.skipped} already done, "
                  f"{len(report.failed)} failed")

    console.rule("3. store")
    problems = check_store(store)
    for p in problems:
        console.print(f"[red]{p}[/]")
    print_info(store.path)
    return 1 if (problems or report.failed) else 0
