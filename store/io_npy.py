"""Import from and export to MERTools-style folders of per-clip ``.npy`` files.

A MERTools feature folder holds ``<name>.npy`` per clip: 1-D for utterance level, 2-D ``[T, D]``
for frame level. The folder name usually encodes the model; here it becomes the set's provenance.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .featurestore import FeatureStore
from .provenance import Provenance

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """What an import did: the set key, clips written, and failed clips with reasons."""

    key: str
    written: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def _probe_level(files: list[Path]) -> tuple[str, int]:
    for p in files:
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            continue
        if arr.ndim in (1, 2):
            return ("utt" if arr.ndim == 1 else "frame"), int(arr.shape[-1])
    raise ValueError("no readable 1-D or 2-D .npy file to take the level and dim from")


def import_npy_folder(store: FeatureStore, key: str, folder: str | os.PathLike[str], *, level: str = "auto",
                      dtype: str = "float16", force: bool = False, fps: float | None = None) -> ImportReport:
    """Import every ``<name>.npy`` of ``folder`` into feature set ``key``.

    Args:
        level: ``utt``, ``frame`` or ``auto`` (from the first readable file).
        fps: frame rate of frame-level arrays, to record timestamps (``None``: unknown, NaN).
    Clips already done are skipped (resume); unreadable files or wrong shapes are recorded as
    failures naming the clip, and the import goes on.
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .npy files")
    probed_level, dim = _probe_level(files)
    if level == "auto":
        level = probed_level
    prov = Provenance(extractor="import-npy", model=str(folder.resolve()),
                      config={"source": folder.name, "level": level}, decode={"fps": fps})
    fs = store.create(key, level=level, dim=dim, provenance=prov, dtype=dtype, force=force)
    report = ImportReport(key)
    done = fs.done_names()
    with fs.writer(flush_rows=4096) as w:
        for p in files:
            name = p.stem
            if name in done:
                report.skipped += 1
                continue
            try:
                arr = np.load(p, allow_pickle=False)
                if level == "utt" and arr.ndim == 2 and arr.shape[0] > 1:
                    raise ValueError(f"2-D array {arr.shape} in an utterance-level import")
                times = np.arange(len(arr), dtype=np.float32) / fps if level == "frame" and fps else None
                w.add(name, arr, times=times)
                report.written += 1
            except (OSError, ValueError, EOFError) as exc:  # includes ClipValueError
                reason = f"{p.name}: {exc}"
                w.fail(name, reason)
                report.failed[name] = reason
    return report


def export_npy_folder(store: FeatureStore, key: str, folder: str | os.PathLike[str]) -> int:
    """Write each clip of ``key`` as ``<folder>/<name>.npy`` (float32); returns the number written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fs = store[key]
    names = fs.names()
    values = fs.read(names, dtype="float32")
    for name, vec in zip(names, values):
        np.save(folder / f"{name}.npy", vec)
    return len(names)
