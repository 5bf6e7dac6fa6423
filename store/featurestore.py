"""The feature store: one Zarr v3 directory holding many ``<modality>/<name>`` feature sets."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import ContainsGroupError

from .errors import FeatureSetNotFound, MissingClipsError, ProvenanceMismatch, StoreError
from .featureset import FeatureSet
from .layout import ATTR, DTYPES, FORMAT_VERSION, LEVELS, check_key, create_arrays
from .lock import locked, locked_store
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
        for mod in sorted(p for p in self.path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for sub in sorted(p for p in mod.iterdir() if p.is_dir() and not p.name.startswith(".")):
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
        otherwise :class:`ProvenanceMismatch` is raised, unless ``force`` starts the set anew: it is
        deleted and made again with a new *generation*, all under the store's lock and the set's
        lock, so a consolidation waiting for the set's lock sees the new set whole, and segments an
        old writer still writes are never merged into it (see :class:`FeatureSet`).

        What is at ``<store>/<key>`` when it is not a set decides what happens:

        * nothing: the set is made;
        * a directory without ``zarr.json``, or whose ``zarr.json`` is a Zarr v3 group with no
          attributes at all: a create that was interrupted (the group and its arrays are made
          before the attributes, which are written last); it is deleted and made anew;
        * anything else (``zarr.json`` unreadable or not JSON, of another Zarr format, an array, a
          group with attributes that are not a mer set's, a set of a newer mer format): raises
          :class:`StoreError` naming the set and the problem, with or without ``force``, and
          deletes nothing.
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
        trash: Path | None = None
        # the store's lock: two processes creating one set at once; the set's lock (a file that
        # outlives the set's directory): consolidations of the set, also one waiting across --force
        with locked_store(self.path), locked(self.path / key, what=f"feature set {key!r}"):
            state, problem = _set_state(self.path / key)
            if state == "set":
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
                trash = self._move_away(key)
            elif state == "half":  # a writer killed while creating the set: no ledger, no data
                log.warning("feature set %s was left half-created by an interrupted run (%s); creating it anew",
                            key, problem)
                shutil.rmtree(self.path / key)
            elif state in ("foreign", "newer"):
                raise StoreError(f"cannot create feature set {key!r} in {self.path}: {problem}; "
                                 "nothing was changed (move it away or choose another set name)")
            modality, name = key.split("/")
            root = zarr.open_group(str(self.path), mode="a")
            group = root.require_group(modality).create_group(name)
            create_arrays(group, level, int(dim), dtype)
            if level == "frame":
                group["offsets"][0] = 0
            group.attrs[ATTR] = {  # written last: a group without attributes is a create cut short
                "format": FORMAT_VERSION, "level": level, "dim": int(dim), "dtype": dtype,
                "n_rows": 0, "n_frames": 0, "provenance": provenance.to_dict(), "failures": {},
                "last_consolidation": [], "generation": uuid.uuid4().hex, "created": utc_now(),
                "updated": utc_now(),
            }
        if trash is not None:
            shutil.rmtree(trash)
        return FeatureSet(self.path, key)

    def delete(self, key: str) -> None:
        """Remove a feature set and everything pending for it.

        Writers still writing it get :class:`~mer.store.errors.FeatureSetRecreated` at their next
        commit; what they manage to write meanwhile lands nowhere (or, if the set is made anew at
        once, in a new generation that never merges it).
        """
        self._writable()
        self[key]  # raises FeatureSetNotFound
        with locked_store(self.path), locked(self.path / key, what=f"feature set {key!r}"):
            if key not in self:
                raise FeatureSetNotFound(key, self.sets())
            trash = self._move_away(key)
        shutil.rmtree(trash)

    def _move_away(self, key: str) -> Path:
        """Rename the set's directory to a hidden name (atomic: the set vanishes at once); the caller
        holds the set's lock and removes the returned directory."""
        path = self.path / key
        trash = path.with_name(f".{path.name}.deleting-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(path, trash)
        return trash

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
    return _set_state(path)[0] in ("set", "newer")


def _set_state(path: Path) -> tuple[str, str]:
    """What is at a set's directory, and why: ``("absent"|"set"|"newer"|"half"|"foreign", reason)``.

    ``newer`` is a set of a newer mer format (listed, never written); ``half`` is a create that was
    cut short (no ``zarr.json``, or a Zarr v3 group without any attributes); ``foreign`` is
    everything that is neither a mer set nor that (see :meth:`FeatureStore.create`), which must
    never be deleted.
    """
    if not path.exists():
        return "absent", "nothing there"
    if not path.is_dir():
        return "foreign", f"{path} is a file, not a directory"
    meta = path / "zarr.json"
    if not meta.exists():
        return "half", "a directory without zarr.json"
    try:
        with open(meta, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        return "foreign", f"its zarr.json cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(doc, dict):
        return "foreign", "its zarr.json is not a JSON object"
    if doc.get("zarr_format") != 3:
        return "foreign", (f"its zarr.json is of Zarr format {doc.get('zarr_format')!r}, not 3 (written by newer "
                           "or other software)")
    if doc.get("node_type") != "group":
        return "foreign", f"its zarr.json describes a Zarr {doc.get('node_type')!r}, not a group"
    attrs = doc.get("attributes") or {}
    if not isinstance(attrs, dict):
        return "foreign", "its zarr.json has attributes that are not a JSON object"
    if not attrs:
        return "half", "a Zarr group without attributes"
    mer = attrs.get(ATTR)
    if not isinstance(mer, dict) or "level" not in mer:
        return "foreign", ("its zarr.json is a Zarr group whose attributes are not a mer feature set's "
                           f"({', '.join(sorted(attrs))})")
    fmt = mer.get("format", FORMAT_VERSION)
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        return "newer", (f"its zarr.json is a feature set of mer format {mer.get('format')!r}, newer than this mer "
                           f"understands ({FORMAT_VERSION}); upgrade mer")
    return "set", "a feature set"
