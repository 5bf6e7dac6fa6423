"""The feature store: one Zarr v3 directory holding many ``<modality>/<name>`` feature sets."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsGroupError

from .errors import FeatureSetNotFound, MissingClipsError, ProvenanceMismatch, StoreError
from .featureset import FeatureSet
from .layout import ATTR, DTYPES, FORMAT_VERSION, LEVELS, check_key, create_arrays
from .lock import locked
from .provenance import Provenance, identity_differences, utc_now

log = logging.getLogger(__name__)


@dataclass
class JoinedFeatures:
    """Several feature sets aligned by clip name.

    Attributes:
        names: the clips, in output order.
        features: set key -> ``[N, D]`` float32 (utterance level, zeros where absent) or a list of
            ``[T_i, D]`` arrays / ``None`` (frame level).
        present: set key -> ``[N]`` bool, False where the clip lacks that set.
    """

    names: list[str]
    features: dict[str, Any]
    present: dict[str, np.ndarray]


class FeatureStore:
    """A directory of feature sets.

    Args:
        path: the store directory (created on first write when ``mode='a'``).
        mode: ``'a'`` read/write, ``'r'`` read only.
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "a") -> None:
        self.path = Path(path)
        self.mode = mode
        if mode == "r" and not (self.path / "zarr.json").exists():
            what = "does not exist" if not self.path.exists() else "is not a mer feature store (no zarr.json)"
            raise StoreError(f"store {self.path} {what}")

    def _ensure_root(self) -> None:
        """Create the root group on the first write (so a failed command leaves no empty store)."""
        if (self.path / "zarr.json").exists():
            return
        try:
            root = zarr.open_group(str(self.path), mode="a")
        except (ContainsGroupError, FileExistsError):
            if (self.path / "zarr.json").exists():
                return  # another process created the store between our check and our create
            raise
        root.attrs[ATTR] = {"format": FORMAT_VERSION, "kind": "feature-store", "created": utc_now()}

    # ---- listing --------------------------------------------------------------------------
    def sets(self) -> list[str]:
        """Keys of every feature set, sorted."""
        keys: list[str] = []
        if not self.path.is_dir():
            return keys
        for mod in sorted(p for p in self.path.iterdir() if p.is_dir()):
            for sub in sorted(p for p in mod.iterdir() if p.is_dir()):
                if _is_set(sub):
                    keys.append(f"{mod.name}/{sub.name}")
        return keys

    def __contains__(self, key: str) -> bool:
        return _is_set(self.path / key)

    def __getitem__(self, key: str) -> FeatureSet:
        if key not in self:
            raise FeatureSetNotFound(key, self.sets())
        return FeatureSet(self.path, key)

    def __iter__(self):
        return iter(self.sets())

    # ---- creating -------------------------------------------------------------------------
    def create(self, key: str, *, level: str, dim: int, provenance: Provenance, dtype: str = "float16",
               force: bool = False) -> FeatureSet:
        """Open ``key`` for writing, creating it if needed.

        An existing set is reused only when its level, dim, dtype and provenance identity match;
        otherwise :class:`ProvenanceMismatch` is raised, unless ``force`` starts the set anew.
        """
        self._writable()
        check_key(key)
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        wanted = {"level": level, "dim": int(dim), "dtype": dtype, **provenance.identity()}
        self._ensure_root()
        with locked(self.path, what=f"store {self.path}"):  # two processes creating one set at once
            if key in self:
                fs = FeatureSet(self.path, key)
                if not force:
                    meta = fs.meta()
                    stored = {"level": meta["level"], "dim": meta["dim"], "dtype": meta["dtype"],
                              **Provenance.from_dict(meta["provenance"]).identity()}
                    diff = identity_differences(stored, wanted)
                    if diff:
                        raise ProvenanceMismatch(key, diff)
                    fs.consolidate()  # pick up segments a dead writer left behind
                    return fs
                log.info("--force: deleting feature set %s to start it anew", key)
                self.delete(key)
            modality, name = key.split("/")
            half_made = self.path / key
            if half_made.exists():  # a writer killed while creating the set: no ledger, no data
                log.warning("feature set %s was left half-created by an interrupted run; creating it anew", key)
                shutil.rmtree(half_made)
            root = zarr.open_group(str(self.path), mode="a")
            group = root.require_group(modality).create_group(name)
            create_arrays(group, level, int(dim), dtype)
            if level == "frame":
                group["offsets"][0] = 0
            group.attrs[ATTR] = {
                "format": FORMAT_VERSION, "level": level, "dim": int(dim), "dtype": dtype,
                "n_rows": 0, "n_frames": 0, "provenance": provenance.to_dict(), "failures": {},
                "last_consolidation": [], "created": utc_now(), "updated": utc_now(),
            }
        return FeatureSet(self.path, key)

    def delete(self, key: str) -> None:
        """Remove a feature set and everything pending for it."""
        self._writable()
        fs = self[key]
        with locked(fs.path, what=f"feature set {key!r}"):
            trash = fs.path.with_name(f".{fs.path.name}.deleting-{os.getpid()}")
            os.rename(fs.path, trash)  # atomic: the set vanishes at once
        shutil.rmtree(trash)

    def _writable(self) -> None:
        """Refuse to start writing where nothing could be written (before any work is done)."""
        if self.mode == "r":
            raise StoreError(f"store {self.path} was opened read-only")
        # access(2) reports a read-only file system even to root (for whom permission bits do not count)
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise StoreError(f"store {self.path} is not writable (read-only file system or no permission); "
                             "nothing was written")

    # ---- reading --------------------------------------------------------------------------
    def read(self, key: str, names: list[str] | None = None, **kwargs: Any) -> Any:
        """``self[key].read(names)``: vectors aligned to ``names``."""
        return self[key].read(names, **kwargs)

    def join(self, keys: list[str], names: list[str] | None = None, *, how: str = "inner") -> JoinedFeatures:
        """Align several sets by clip name.

        ``how='inner'`` keeps clips present in every set (with ``names`` given, any clip missing from
        any set is an error); ``how='outer'`` keeps clips present in at least one set and marks the
        gaps in ``present`` (with ``names`` given, only clips missing from every set are an error).
        """
        if how not in ("inner", "outer"):
            raise ValueError(f"how must be 'inner' or 'outer', got {how!r}")
        sets = [self[k] for k in keys]
        indexes = [fs.index() for fs in sets]
        if names is None:
            order = list(indexes[0]) if indexes else []
            if how == "inner":
                order = [n for n in order if all(n in ix for ix in indexes[1:])]
            else:
                seen = set(order)
                for ix in indexes[1:]:
                    extra = [n for n in ix if n not in seen]
                    order.extend(extra)
                    seen.update(extra)
            names = order
        else:
            names = [str(n) for n in names]
            for fs, ix in zip(sets, indexes):
                missing = [n for n in names if n not in ix]
                if how == "inner" and missing:
                    raise MissingClipsError(fs.key, missing, len(names))
            if how == "outer":
                nowhere = [n for n in names if not any(n in ix for ix in indexes)]
                if nowhere:
                    raise MissingClipsError("+".join(keys), nowhere, len(names))
        features: dict[str, Any] = {}
        present: dict[str, np.ndarray] = {}
        for fs, ix in zip(sets, indexes):
            mask = np.array([n in ix for n in names], dtype=bool)
            have = [n for n, m in zip(names, mask) if m]
            got = fs.read(have)
            if fs.level == "utt":
                full = np.zeros((len(names), fs.dim), dtype=np.float32)
                full[mask] = got
                features[fs.key] = full
            else:
                it = iter(got)
                features[fs.key] = [next(it).astype(np.float32) if m else None for m in mask]
            present[fs.key] = mask
        return JoinedFeatures(names=names, features=features, present=present)

    def nbytes(self) -> int:
        """Bytes of the whole store on disk."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"


def _is_set(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        with open(meta, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and ATTR in doc.get("attributes", {}) and "level" in doc["attributes"][ATTR]
