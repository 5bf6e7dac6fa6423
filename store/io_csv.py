"""Import precomputed per-clip features from a CSV (one row per clip: ``name`` + numeric columns).

This is how OpenFace action-unit tables (``openface_au.csv``) become the visual modality.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .featurestore import FeatureStore
from .io_npy import ImportReport
from .provenance import Provenance, hash_path
from .tables import TableError


def import_csv_features(store: FeatureStore, key: str, path: str | os.PathLike[str], *,
                        name_col: str = "name", columns: list[str] | None = None, dtype: str = "float32",
                        force: bool = False, names: list[str] | None = None) -> ImportReport:
    """Import a CSV of utterance-level features as feature set ``key``.

    Args:
        columns: feature columns to take (default: every column but ``name_col``), in that order.
        names: only these clips (default: every row).
    A row with a missing or non-numeric value is recorded as a failure naming the clip and column;
    duplicate names are an error before anything is written.
    """
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        rows = list(reader)
    if name_col not in header:
        raise TableError(f"{path}: no {name_col!r} column")
    feat_cols = columns or [h for h in header if h != name_col]
    unknown = [c for c in feat_cols if c not in header]
    if unknown:
        raise TableError(f"{path}: unknown columns {', '.join(unknown)}")
    idx = [header.index(c) for c in feat_cols]
    name_idx = header.index(name_col)
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if row[name_idx] in seen:
            raise TableError(f"{path}:{line}: duplicate clip name {row[name_idx]!r} (first on line {seen[row[name_idx]]})")
        seen[row[name_idx]] = line
    wanted = set(names) if names is not None else None
    prov = Provenance(extractor="import-csv", model=str(path.resolve()), weights_hash=hash_path(path),
                      config={"columns": feat_cols, "name_col": name_col})
    fs = store.create(key, level="utt", dim=len(feat_cols), provenance=prov, dtype=dtype, force=force)
    report = ImportReport(key)
    done = fs.done_names()
    with fs.writer(flush_rows=8192) as w:
        for line, row in enumerate(rows, start=2):
            name = row[name_idx]
            if wanted is not None and name not in wanted:
                continue
            if name in done:
                report.skipped += 1
                continue
            try:
                vec = np.array([_number(row, i, header) for i in idx], dtype=np.float64)
                w.add(name, vec)
                report.written += 1
            except ValueError as exc:
                reason = f"{path.name}:{line}: {exc}"
                w.fail(name, reason)
                report.failed[name] = reason
    return report


def _number(row: list[str], i: int, header: list[str]) -> float:
    if i >= len(row) or row[i].strip() == "":
        raise ValueError(f"missing value in column {header[i]!r}")
    try:
        return float(row[i])
    except ValueError:
        raise ValueError(f"non-numeric value {row[i]!r} in column {header[i]!r}") from None
