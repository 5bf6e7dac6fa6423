"""Export feature sets to HDF5 (h5py), and read such files back into a store.

HDF5 layout: one group per set key (``/audio/whisper-base``) with datasets ``names`` (UTF-8),
``values``, and at frame level ``offsets`` and ``times``; the group attribute ``mer`` holds the
set's metadata (level, dim, dtype, provenance) as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .featurestore import FeatureStore
from .io_npy import ImportReport
from .provenance import Provenance


def export_h5(store: FeatureStore, path: str | os.PathLike[str], keys: list[str] | None = None) -> list[str]:
    """Write ``keys`` (default: all sets) to one HDF5 file; returns the keys written."""
    keys = keys or store.sets()
    with h5py.File(Path(path), "w") as h5:
        for key in keys:
            fs = store[key]
            meta = fs.meta()
            names = fs.names()
            g = h5.create_group(key)
            g.attrs["mer"] = json.dumps({k: meta[k] for k in ("level", "dim", "dtype", "provenance")})
            g.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            data = fs.read(names)
            if meta["level"] == "utt":
                g.create_dataset("values", data=data, chunks=True)
            else:
                lengths = np.array([len(x) for x in data], dtype=np.int64)
                g.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]))
                flat = np.concatenate(data) if data else np.zeros((0, meta["dim"]), meta["dtype"])
                g.create_dataset("values", data=flat, chunks=True if len(flat) else None)
                times = fs.read_times(names)
                g.create_dataset("times", data=np.concatenate(times) if times else np.zeros(0, np.float32))
    return keys


def import_h5(store: FeatureStore, path: str | os.PathLike[str], keys: list[str] | None = None, *,
              force: bool = False) -> list[ImportReport]:
    """Read sets written by :func:`export_h5` into ``store`` (resumable like any write)."""
    reports = []
    with h5py.File(Path(path), "r") as h5:
        found = []
        h5.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Group) and "mer" in obj.attrs else None)
        for key in keys or found:
            g = h5[key]
            meta = json.loads(g.attrs["mer"])
            prov = Provenance.from_dict(meta["provenance"])
            fs = store.create(key, level=meta["level"], dim=int(meta["dim"]), provenance=prov,
                              dtype=meta["dtype"], force=force)
            report = ImportReport(key)
            done = fs.done_names()
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g["names"][:]]
            values = g["values"][:]
            if meta["level"] == "frame":
                offsets, times = g["offsets"][:], g["times"][:]
            with fs.writer(flush_rows=8192) as w:
                for i, name in enumerate(names):
                    if name in done:
                        report.skipped += 1
                        continue
                    if meta["level"] == "utt":
                        w.add(name, values[i])
                    else:
                        lo, hi = int(offsets[i]), int(offsets[i + 1])
                        w.add(name, values[lo:hi], times=times[lo:hi])
                    report.written += 1
            reports.append(report)
    return reports
