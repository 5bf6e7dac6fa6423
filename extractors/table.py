"""Precomputed per-clip features from a CSV (one row per clip: a name column + numeric columns).

This lets OpenFace action-unit tables, or any features computed elsewhere, enter a store through
the same stage as the models: ``mer extract video clips.csv -e table -m openface_au.csv``. The CSV
is this extractor's "weights": it is read once, hashed into the provenance, and looked up by name.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import ANY, ClipRef, Extractor, ExtractorConfig, Features, ItemError, register_extractor


@dataclass
class TableConfig(ExtractorConfig):
    """Feature table settings."""

    model: str = ""  # path of the CSV file
    name_col: str = "name"  # column holding clip names
    columns: str = ""  # comma-separated feature columns, in order (empty: every column but name_col)


@register_extractor("table")
class TableFeatures(Extractor):
    """Rows of a CSV as utterance-level vectors."""

    modality = ANY
    config_class = TableConfig
    levels = ("utt",)
    decodes = False

    def __init__(self, config: TableConfig) -> None:
        super().__init__(config)
        path = Path(config.model)
        if not path.is_file():
            raise FileNotFoundError(f"feature table {path} not found (give it with --model)")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader)]
            rows = list(reader)
        if config.name_col not in header:
            raise ValueError(f"{path}: no {config.name_col!r} column")
        cols = [c.strip() for c in config.columns.split(",") if c.strip()] or [h for h in header if h != config.name_col]
        unknown = [c for c in cols if c not in header]
        if unknown:
            raise ValueError(f"{path}: unknown columns {', '.join(unknown)}")
        self.columns = cols
        idx = [header.index(c) for c in cols]
        key = header.index(config.name_col)
        self.rows: dict[str, list[str]] = {}
        for r in rows:
            if r[key] in self.rows:
                raise ValueError(f"{path}: duplicate clip name {r[key]!r}")
            self.rows[r[key]] = [r[i] if i < len(r) else "" for i in idx]

    @property
    def dim(self) -> int:
        return len(self.columns)

    def extract(self, items: list[ClipRef]) -> list[Features]:
        out = []
        for item in items:
            raw = self.rows.get(item.name)
            if raw is None:
                raise ItemError(item.name, f"not in feature table {Path(self.config.model).name}")
            try:
                out.append(Features(np.array([float(v) for v in raw], dtype=np.float32)))
            except ValueError:
                bad = next(c for c, v in zip(self.columns, raw) if not _is_number(v))
                raise ItemError(item.name, f"non-numeric or missing value in column {bad!r}") from None
        return out


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
