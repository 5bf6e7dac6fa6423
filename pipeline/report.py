"""Printing a stage's outcome: a summary table and the failed clips."""

from __future__ import annotations

import sys
from typing import Any

from .stage import StageReport


def print_report(report: StageReport, max_failures: int = 20) -> None:
    """Summary table (done, skipped, failed, rate) and the first failures with their reasons."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"mer extract: {report.key}")
    for col in ("clips", "done", "skipped", "failed", "seconds", "clips/s"):
        table.add_column(col, justify="right")
    table.add_row(str(report.total), str(report.done), str(report.skipped), str(len(report.failed)),
                  f"{report.seconds:.1f}", f"{report.clips_per_s:.2f}")
    console.print(table)
    for name, reason in list(report.failed.items())[:max_failures]:
        console.print(f"[red]failed[/] clip {escape(name)}: {escape(reason)}")
    if len(report.failed) > max_failures:
        console.print(f"... and {len(report.failed) - max_failures} more (see `mer store info`)")
    if report.partial:
        for name, why in list(report.partial.items())[:max_failures]:
            console.print(f"[yellow]partly decoded[/] clip {escape(name)}: {escape(why)}; kept what decoded")
        if len(report.partial) > max_failures:
            console.print(f"... and {len(report.partial) - max_failures} more partly decoded clips")
        console.print("partly decoded clips are recorded per clip as `partial_decode` (FeatureSet.read_extra)")
    if report.faces:
        print_faces(console, report.faces, max_failures)
    if report.truncated:
        cut = list(report.truncated.items())
        shown = ", ".join(f"{name} ({n} tokens dropped)" for name, n in cut[:max_failures])
        more = f", ... ({len(cut)} in all)" if len(cut) > max_failures else ""
        console.print(f"[yellow]truncated[/] {len(cut)} clips to the model's max length: {escape(shown)}{more}; "
                      "recorded per clip as `truncated_tokens` (FeatureSet.read_extra)")


def print_faces(console: Any, faces: dict[str, tuple[int, int]], max_clips: int = 20) -> None:
    """One line on the face crops of this run, and the clips where no frame had a face."""
    from rich.markup import escape

    found = sum(f for f, _ in faces.values())
    frames = sum(n for _, n in faces.values())
    share = f" ({found / frames:.0%})" if frames else ""
    console.print(f"faces: found in {found} of {frames} sampled frames{share} of {len(faces)} clips; "
                  "recorded per clip as `faces` and per frame as `face_*` (FeatureSet.read_frame_extra)")
    none = [name for name, (f, _) in faces.items() if f == 0]
    if none:
        more = f", ... ({len(none)} in all)" if len(none) > max_clips else ""
        console.print(f"[yellow]no face[/] in any frame of {len(none)} clips: {escape(', '.join(none[:max_clips]))}{more} "
                      "(centre squares were used; --require-face makes them failures)")
