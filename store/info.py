"""Summaries of feature sets for ``mer store info``."""

from __future__ import annotations

from typing import Any

from .featurestore import FeatureStore
from .segments import list_segments


def describe_set(store: FeatureStore, key: str) -> dict[str, Any]:
    """One row of ``mer store info``: counts, layout, size on disk, provenance summary, failures, and
    the keys of the per-clip (``extras``) and per-frame (``frame_extras``) numbers recorded."""
    fs = store[key]
    meta = fs.meta()
    prov = meta.get("provenance", {})
    failures = fs.failures()
    return {
        "set": key,
        "level": meta["level"],
        "clips": int(meta["n_rows"]) - int(meta.get("n_superseded", 0)),
        "frames": int(meta["n_frames"]) if meta["level"] == "frame" else None,
        "dim": int(meta["dim"]),
        "dtype": meta["dtype"],
        "bytes": fs.nbytes(),
        "extractor": prov.get("extractor"),
        "model": prov.get("model"),
        "weights_hash": prov.get("weights_hash"),
        "decode": prov.get("decode", {}),
        "finetune": prov.get("finetune"),
        "created": meta.get("created"),
        "updated": meta.get("updated"),
        "extras": list(meta.get("extras", [])),
        "frame_extras": list(meta.get("frame_extras", [])),
        "failures": len(failures),
        "failed": failures,
        "pending_segments": len(list_segments(fs.pending_dir)),
    }


def describe_store(store: FeatureStore) -> list[dict[str, Any]]:
    """:func:`describe_set` for every set of the store."""
    return [describe_set(store, key) for key in store.sets()]
