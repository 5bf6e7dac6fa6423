"""Provenance of a feature set: what produced its vectors, recorded in the set's attributes.

Two writers may share a set only when the *identity* part of their provenance agrees: extractor,
its config (as resolved: ``compute_type="auto"`` is recorded as the type it ran with), the model, its
hub revision (the snapshot commit of a hub id) or its weights hash (a local folder or file), the
decode settings and the layout (level, dim, dtype). Package versions, the project commit and the
creation time are recorded but not compared, so a `pip upgrade` does not lock anyone out of resuming
a half-done set; nor are speed knobs (:data:`SPEED_CONFIG_KEYS`).

Sets written before ``revision`` was recorded load with ``revision=None``: a local model keeps
matching (its revision is ``None`` too), a hub id is refused (``revision: stored=None new='<commit>'``)
because which snapshot wrote the set cannot be told.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "mer", "numpy", "zarr", "torch", "transformers", "open_clip_torch", "ctranslate2",
    "decord", "av", "scikit-learn",
)
IDENTITY_FIELDS = ("extractor", "config", "model", "revision", "weights_hash", "decode")
# Config keys that change only speed or placement, never the vectors. Extractors leave them out of
# the config they record (``ExtractorConfig.SPEED_FIELDS``); older mer recorded some of them
# (``intra_threads``, ``device_map``), so they are also dropped from stored configs before comparing.
SPEED_CONFIG_KEYS = ("device", "batch_size", "intra_threads", "device_map")


@dataclass
class Provenance:
    """Where a feature set's vectors came from.

    Attributes:
        extractor: registered extractor name (``whisper-ct2``, ``clip``) or importer (``import-npy``).
        config: the extractor's full config as a JSON-able dict.
        model: hub id or local path of the model, or the source of imported features.
        weights_hash: content hash of the model weights (see :func:`hash_path`), or ``None``.
        decode: decode settings that shaped the inputs (fps, sample rate, face crop, text column).
        packages: versions of the packages that matter, recorded at creation.
        project: mer version and git commit, recorded at creation.
        created: UTC creation time, ISO 8601.
        revision: commit hash of the Hugging Face hub snapshot the model was loaded from (a hub id),
            ``None`` for local weights (identified by ``weights_hash``). Identity: another snapshot
            is another model.
        finetune: the model's fine-tuning record (``mer_finetune.json`` of a ``mer finetune`` output
            directory, less the list of clip names), or ``None``. Not an identity field: the weights
            hash already tells fine-tuned models apart.
    """

    extractor: str
    config: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    weights_hash: str | None = None
    decode: dict[str, Any] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=lambda: package_versions())
    project: dict[str, str | None] = field(default_factory=lambda: project_version())
    created: str = field(default_factory=lambda: utc_now())
    finetune: dict[str, Any] | None = None
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """Rebuild from :meth:`to_dict` output, ignoring unknown keys."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def identity(self) -> dict[str, Any]:
        """The fields two writers of one set must agree on."""
        d = self.to_dict()
        out = {k: d[k] for k in IDENTITY_FIELDS}
        out["config"] = {k: v for k, v in (out["config"] or {}).items() if k not in SPEED_CONFIG_KEYS}
        return out


def identity_differences(stored: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ between two identity dicts (nested config keys are flattened; a
    missing key equals ``None``; the speed knobs :data:`SPEED_CONFIG_KEYS` of ``config`` are ignored,
    so identities recorded before they were left out still match)."""
    speed = {f"config.{k}" for k in SPEED_CONFIG_KEYS}
    flat_old, flat_new = ({k: v for k, v in _flatten(d).items() if k not in speed} for d in (stored, new))
    keys = sorted(set(flat_old) | set(flat_new))
    return {k: (flat_old.get(k), flat_new.get(k)) for k in keys if flat_old.get(k) != flat_new.get(k)}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


FINETUNE_RECORD = "mer_finetune.json"  # written by ``mer finetune`` into the model directory


def read_finetune_record(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The fine-tuning record of a model directory (or of the directory holding a weights file).

    Returns ``mer_finetune.json`` without its clip-name lists (``trained_on.names`` and the like: the
    counts and hashes stay) and with ``skipped`` reduced to a count, so that it fits in a feature
    set's attributes; ``None`` when there is no record or it is unreadable.
    """
    if path is None:
        return None
    root = Path(path)
    record = (root if root.is_dir() else root.parent) / FINETUNE_RECORD
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("unreadable fine-tune record %s: %s", record, exc)
        return None
    for key, value in list(data.items()):
        if isinstance(value, dict) and "names" in value:
            data[key] = {k: v for k, v in value.items() if k != "names"}
    if isinstance(data.get("skipped"), dict):
        data["skipped"] = {"count": len(data["skipped"])}
    return data


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (missing packages are left out). Imports nothing."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def project_version() -> dict[str, str | None]:
    """mer's version and, when running from a git checkout, its commit (``+dirty`` if modified)."""
    from mer import __version__

    here = Path(__file__).resolve().parent
    commit = None
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        if res.returncode == 0:
            commit = res.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5, check=False)
            if dirty.returncode == 0 and dirty.stdout.strip():
                commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"version": __version__, "commit": commit}


_HASH_CACHE = Path(os.environ.get("MER_CACHE", Path.home() / ".cache" / "mer")) / "weights-hash.json"


def hash_path(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """Content hash (``sha256:<hex>``) of a weights file or of every file under a directory.

    Each file contributes its relative path and its bytes, in sorted order, so renaming or editing
    any file changes the hash. Hashes are cached per (path, size, mtime) of every file, because a
    13B model takes a minute to read.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"cannot hash weights: {root} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root))
    stamp = [(str(p.relative_to(root.parent if root.is_file() else root)), p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    cache_key = hashlib.sha256(json.dumps([str(root.resolve()), stamp]).encode()).hexdigest()
    cache = _load_cache() if use_cache else {}
    if cache_key in cache:
        return cache[cache_key]
    h = hashlib.sha256()
    for p, (rel, _size, _mtime) in zip(files, stamp):
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    digest = f"sha256:{h.hexdigest()}"
    if use_cache:
        cache[cache_key] = digest
        _save_cache(cache)
    return digest


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    try:
        _HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _HASH_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, _HASH_CACHE)
    except OSError as exc:  # a read-only home must not stop extraction
        log.debug("could not write weights-hash cache: %s", exc)
