"""Export feature sets to HDF5 (h5py), and read such files back into a store.

HDF5 layout: one group per set key (``/audio/whisper-base``) with datasets ``names`` (UTF-8),
``values``, and at frame level ``offsets`` and ``times``; the group attribute ``mer`` holds the
set's metadata (level, dim, dtype, provenance) as JSON. What the set records beside the vectors
comes along: per-clip numbers as ``clip_extras/<key>`` ``[N]`` (NaN: not recorded) and per-frame
numbers (e.g. the face box of each decoded frame) as ``frame_extras/offsets`` ``[N+1]`` plus
``frame_extras/<key>`` (the clips' frames one after another; a clip without them has none).
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
                offsets, flat = _flatten(data, np.zeros((0, meta["dim"]), meta["dtype"]))
                g.create_dataset("offsets", data=offsets)
                g.create_dataset("values", data=flat, chunks=True if len(flat) else None)
                g.create_dataset("times", data=_flatten(fs.read_times(names), np.zeros(0, np.float32))[1])
            _export_extras(fs, g, names, meta)
    return keys


def _export_extras(fs, g: h5py.Group, names: list[str], meta: dict) -> None:
    """``clip_extras/<k>`` and ``frame_extras/{offsets,<k>}`` of a set, when it records any."""
    if meta.get("extras"):
        ce = g.create_group("clip_extras")
        for key in meta["extras"]:
            ce.create_dataset(key, data=fs.read_extra(key, names).astype(np.float64))
    fx_keys = fs.frame_extra_keys()
    if fx_keys:
        fe = g.create_group("frame_extras")
        for i, key in enumerate(fx_keys):
            offsets, flat = _flatten(fs.read_frame_extra(key, names), np.zeros(0, np.float32))
            if i == 0:  # every key has the same frames per clip
                fe.create_dataset("offsets", data=offsets)
            fe.create_dataset(key, data=flat.astype(np.float32))


def _flatten(arrays: list[np.ndarray], empty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-clip arrays as ``offsets`` ``[N+1]`` and their rows one after another (``empty``: none)."""
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in arrays], dtype=np.int64)]).astype(np.int64)
    return offsets, (np.concatenate(arrays) if arrays else empty)


def _import_extras(g: h5py.Group) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, np.ndarray]]:
    """(per-clip arrays, frame-extras offsets or ``None``, per-frame arrays) of an exported set."""
    clip = {k: g["clip_extras"][k][:] for k in g["clip_extras"]} if "clip_extras" in g else {}
    if "frame_extras" not in g:
        return clip, None, {}
    fe = g["frame_extras"]
    return clip, fe["offsets"][:], {k: fe[k][:] for k in fe if k != "offsets"}


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
            clip_x, fx_off, frame_x = _import_extras(g)
            with fs.writer(flush_rows=8192) as w:
                for i, name in enumerate(names):
                    if name in done:
                        report.skipped += 1
                        continue
                    extras = {k: float(v[i]) for k, v in clip_x.items() if np.isfinite(v[i])}
                    per_frame = None
                    if fx_off is not None and fx_off[i + 1] > fx_off[i]:
                        per_frame = {k: v[int(fx_off[i]):int(fx_off[i + 1])] for k, v in frame_x.items()}
                    if meta["level"] == "utt":
                        w.add(name, values[i], extras=extras, frame_extras=per_frame)
                    else:
                        lo, hi = int(offsets[i]), int(offsets[i + 1])
                        w.add(name, values[lo:hi], times=times[lo:hi], extras=extras, frame_extras=per_frame)
                    report.written += 1
            reports.append(report)
    return reports
