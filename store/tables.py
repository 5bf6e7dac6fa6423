"""Clip tables and label files: the CSVs every stage reads.

A clip table has a ``name`` column and any of ``video``, ``audio`` (paths relative to the CSV)
and ``text`` (the subtitle itself), plus metadata columns such as ``speaker``. Label files are the
MER format ``name,discrete``. Both live here because extraction (pipeline) and training (fusion)
read them and neither room may import the other.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MER_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
MEDIA_COLUMNS = ("video", "audio")


class TableError(ValueError):
    """A clip table or label file is malformed; the message names the file, line and clip."""


@dataclass
class ClipTable:
    """Rows of a clip table, keyed by clip name.

    Attributes:
        path: the CSV it was read from (media paths resolve against its folder), or ``None``.
        columns: column names in file order.
        rows: one dict per clip, in file order.
    """

    path: Path | None
    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    _columns_cache: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def names(self) -> list[str]:
        """Clip names in file order."""
        return [r["name"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, column: str) -> dict[str, str]:
        """``name -> value`` of one column; a clear error when the column does not exist."""
        if column not in self.columns:
            raise TableError(f"{self.path}: no column {column!r} (columns: {', '.join(self.columns)})")
        if column not in self._columns_cache:
            self._columns_cache[column] = {r["name"]: r[column] for r in self.rows}
        return self._columns_cache[column]

    def media_path(self, name: str, column: str) -> Path | None:
        """Absolute path of a clip's ``video``/``audio`` file, or ``None`` when the cell is empty."""
        value = self.column(column)[name]
        if not value:
            return None
        p = Path(value)
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def select(self, names: list[str]) -> ClipTable:
        """A table of the given clips, in that order; unknown names are an error listing them."""
        by_name = {r["name"]: r for r in self.rows}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise TableError(f"{self.path}: {len(missing)} clips not in the table: {', '.join(missing[:20])}")
        return ClipTable(self.path, list(self.columns), [by_name[n] for n in names])


def read_clip_table(path: str | os.PathLike[str]) -> ClipTable:
    """Read and validate a clip table (``name`` column, unique non-empty names)."""
    path = Path(path)
    columns, rows, lines = _read_csv(path)
    if "name" not in columns:
        raise TableError(f"{path}: a clip table needs a 'name' column (found: {', '.join(columns)})")
    _check_names(path, rows, lines)
    return ClipTable(path, columns, rows)


def write_clip_table(table: ClipTable, path: str | os.PathLike[str]) -> Path:
    """Write ``table`` as CSV at ``path``, rewriting media paths relative to the new location."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=table.columns)
        w.writeheader()
        for row in table.rows:
            out = dict(row)
            for col in MEDIA_COLUMNS:
                if out.get(col):
                    src = table.media_path(row["name"], col)
                    out[col] = os.path.relpath(src, path.parent.resolve()) if src else ""
            w.writerow(out)
    return path


def read_labels(path: str | os.PathLike[str], classes: tuple[str, ...] | list[str] | None = None,
                column: str = "discrete") -> dict[str, str]:
    """Read a MER label file ``name,discrete[,...]`` into ``name -> class``.

    Duplicate names, empty labels and (when ``classes`` is given) unknown classes are errors that
    name the file, the line and the clip.
    """
    path = Path(path)
    columns, rows, lines = _read_csv(path)
    for col in ("name", column):
        if col not in columns:
            raise TableError(f"{path}: a label file needs columns 'name' and {column!r} (found: {', '.join(columns)})")
    _check_names(path, rows, lines)
    labels: dict[str, str] = {}
    allowed = set(classes) if classes is not None else None
    for line, row in zip(lines, rows):
        label = row[column].strip()
        if not label:
            raise TableError(f"{path}:{line}: clip {row['name']!r} has an empty label")
        if allowed is not None and label not in allowed:
            raise TableError(f"{path}:{line}: clip {row['name']!r} has unknown class {label!r} "
                             f"(known: {', '.join(classes or ())})")
        labels[row["name"]] = label
    return labels


def write_labels(labels: dict[str, str], path: str | os.PathLike[str]) -> Path:
    """Write ``name,discrete`` rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "discrete"])
        w.writerows(labels.items())
    return path


def read_names(path: str | os.PathLike[str]) -> list[str]:
    """Clip names from a CSV with a ``name`` column, or from a text file with one name per line."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        columns, rows, _ = _read_csv(path)
        if "name" not in columns:
            raise TableError(f"{path}: no 'name' column (found: {', '.join(columns)})")
        return [r["name"] for r in rows]
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """Columns, rows, and the physical line each row starts on (quoted cells may span lines).

    A file that is not UTF-8 is refused as a whole (its encoding is suspect everywhere, and bytes of
    another encoding can form valid but wrong UTF-8 elsewhere); the error names the first line,
    clip and column holding bytes that are not UTF-8.
    """
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        rows, lines = [], []
        start = reader.line_num + 1
        for raw in reader:
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            rows.append(row)
            lines.append(start)
            start = reader.line_num + 1
    _check_utf8(path, columns, rows, lines)
    return columns, rows, lines


def _not_utf8(text: str) -> str | None:
    """Description of the first byte of ``text`` that was not UTF-8 (read with surrogateescape), or None."""
    for i, ch in enumerate(text):
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            return f"byte 0x{ord(ch) - 0xDC00:02x} at character {i + 1} of \"{shown[:60]}\""
    return None


def _check_utf8(path: Path, columns: list[str], rows: list[dict[str, str]], lines: list[int]) -> None:
    hint = "; save the file as UTF-8"
    for col in columns:
        if (bad := _not_utf8(col)) is not None:
            raise TableError(f"{path}:1: header is not UTF-8 text ({bad}){hint}")
    for line, row in zip(lines, rows):
        for col, value in row.items():
            if (bad := _not_utf8(value)) is not None:
                name = row.get("name", "")
                who = f"clip {name!r}" if _not_utf8(name) is None else "clip name"
                raise TableError(f"{path}:{line}: {who}, column {col!r}: not UTF-8 text ({bad}){hint}")


def _check_names(path: Path, rows: list[dict[str, str]], lines: list[int]) -> None:
    for line, row in zip(lines, rows):
        if not row.get("name"):
            raise TableError(f"{path}:{line}: empty clip name")
    dups = [n for n, c in Counter(r["name"] for r in rows).items() if c > 1]
    if dups:
        raise TableError(f"{path}: {len(dups)} duplicate clip names: {', '.join(dups[:20])}")
