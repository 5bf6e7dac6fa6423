"""Build clip tables from dataset folders (``mer clips scan``).

Three layouts are recognised, in this order:
1. RAVDESS style: the folder holds ``clips.csv`` with ``name`` and media columns (``audio``/``video``)
   relative to the folder, plus metadata (``actor`` becomes ``speaker`` when there is none).
2. MER style: the folder holds ``transcription.csv`` (``name, chinese, english``) and video files
   (anywhere below it, matched to names by file stem).
3. Plain: media files anywhere below the folder, one clip per file stem.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mer.store.tables import ClipTable, TableError, read_clip_table, write_labels

log = logging.getLogger(__name__)

VIDEO_EXT = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg")
AUDIO_EXT = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")


def scan_dataset(folder: str | os.PathLike[str]) -> ClipTable:
    """Build a clip table for ``folder`` (paths in it are absolute; :func:`write_clip_table` relativises)."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise TableError(f"{folder}: not a directory")
    if (folder / "clips.csv").is_file():
        return _scan_ravdess(folder)
    media = _media_by_stem(folder)
    if (folder / "transcription.csv").is_file():
        return _scan_mer(folder, media)
    if not media:
        raise TableError(f"{folder}: no clips.csv, transcription.csv or media files found")
    rows = [{"name": stem, **{k: str(v) for k, v in found.items()}} for stem, found in sorted(media.items())]
    columns = ["name"] + [c for c in ("video", "audio") if any(c in r for r in rows)]
    return ClipTable(None, columns, [{c: r.get(c, "") for c in columns} for r in rows])


def _scan_ravdess(folder: Path) -> ClipTable:
    src = read_clip_table(folder / "clips.csv")
    columns = list(src.columns)
    rows = []
    for row in src.rows:
        out = dict(row)
        for col in ("video", "audio"):
            if out.get(col):
                out[col] = str((folder / out[col]).resolve())
        if "speaker" not in columns and "actor" in columns:
            out["speaker"] = row["actor"]
        rows.append(out)
    if "speaker" not in columns and "actor" in columns:
        columns.append("speaker")
    return ClipTable(None, columns, rows)


def _scan_mer(folder: Path, media: dict[str, dict[str, Path]]) -> ClipTable:
    trans = read_clip_table(folder / "transcription.csv")
    text_cols = [c for c in trans.columns if c != "name"]
    rows = []
    for row in trans.rows:
        found = media.get(row["name"], {})
        rows.append({"name": row["name"], "video": str(found.get("video", "")),
                     "audio": str(found.get("audio", "")), **{c: row[c] for c in text_cols}})
    listed = set(trans.names)
    extra = sorted(set(media) - listed)
    for stem in extra:  # videos without a transcription row: keep them, with empty subtitles
        rows.append({"name": stem, "video": str(media[stem].get("video", "")),
                     "audio": str(media[stem].get("audio", "")), **dict.fromkeys(text_cols, "")})
    if extra:
        log.warning("%d media files have no row in transcription.csv (kept with empty subtitles)", len(extra))
    missing = sum(1 for r in rows if not r["video"] and not r["audio"])
    if missing:
        log.warning("%d clips of transcription.csv have no media file under %s", missing, folder)
    return ClipTable(None, ["name", "video", "audio", *text_cols], rows)


def _media_by_stem(folder: Path) -> dict[str, dict[str, Path]]:
    out: dict[str, dict[str, Path]] = {}
    for p in sorted(folder.rglob("*")):
        ext = p.suffix.lower()
        kind = "video" if ext in VIDEO_EXT else "audio" if ext in AUDIO_EXT else None
        if kind is None or not p.is_file():
            continue
        entry = out.setdefault(p.stem, {})
        if kind in entry:
            raise TableError(f"clip {p.stem!r}: two {kind} files ({entry[kind]} and {p})")
        entry[kind] = p
    return out


def labels_from_table(table: ClipTable, column: str, out: str | os.PathLike[str]) -> Path:
    """Write ``name,discrete`` labels taken from a column of the clip table (e.g. RAVDESS ``emotion``)."""
    labels = table.column(column)
    empty = [n for n, v in labels.items() if not v]
    if empty:
        raise TableError(f"{len(empty)} clips have no value in column {column!r}: {', '.join(empty[:20])}")
    return write_labels(labels, out)


def check_media(table: ClipTable) -> dict[str, str]:
    """Clips whose media files are missing: ``name -> problem``."""
    problems = {}
    for name in table.names:
        for col in ("video", "audio"):
            if col in table.columns:
                p = table.media_path(name, col)
                if p is not None and not p.is_file():
                    problems[name] = f"{col} file not found: {p}"
    return problems
