"""The fine-tuning record ``mer_finetune.json`` written into every ``mer finetune`` output directory.

It says what the model was trained from and on: base model, task, options, label set, decode
settings, the trained-on clip names (plus their count and a hash), the clips held out, and the
validation metrics per epoch. ``mer extract`` copies it (less the name list) into the provenance
of the feature sets it writes with that model (see :func:`mer.store.provenance.read_finetune_record`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from mer.store.provenance import FINETUNE_RECORD, package_versions, project_version, read_finetune_record, utc_now

RECORD_NAME = FINETUNE_RECORD


def names_digest(names: list[str]) -> str:
    """``sha256:<hex>`` of the sorted clip names (one per line): equal sets give equal digests."""
    h = hashlib.sha256("\n".join(sorted(names)).encode("utf-8"))
    return f"sha256:{h.hexdigest()}"


def clip_set(names: list[str], *, with_names: bool = True) -> dict[str, Any]:
    """``{"count", "sha256", "names"}`` of a clip list (names sorted)."""
    out: dict[str, Any] = {"count": len(names), "sha256": names_digest(names)}
    if with_names:
        out["names"] = sorted(names)
    return out


def write_record(out_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` (plus package versions, project commit, time) as ``out_dir/mer_finetune.json``."""
    path = Path(out_dir) / RECORD_NAME
    full = {**record, "packages": package_versions(("mer", "torch", "transformers", "open_clip_torch", "peft")),
            "project": project_version(), "created": utc_now()}
    path.write_text(json.dumps(full, indent=2, default=str), encoding="utf-8")
    return path


def read_record(model_dir: str | os.PathLike[str], *, full: bool = True) -> dict[str, Any] | None:
    """The record of a fine-tuned model directory (``full=False``: without the name list), or ``None``."""
    if not full:
        return read_finetune_record(model_dir)
    path = Path(model_dir) / RECORD_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = ["RECORD_NAME", "clip_set", "names_digest", "read_record", "write_record"]
