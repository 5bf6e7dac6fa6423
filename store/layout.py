"""On-disk layout of a feature set: names of arrays and attributes, chunk sizes, codecs.

See ``store/README.md`` for the layout as a plain Zarr reader sees it.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import zarr

FORMAT_VERSION = 1
ATTR = "mer"  # every mer attribute of a feature-set group lives under this one key
PENDING_DIR = "_pending"  # write-ahead segments not yet merged into the arrays

Level = Literal["utt", "frame"]
LEVELS: tuple[str, ...] = ("utt", "frame")
DTYPES: tuple[str, ...] = ("float16", "float32")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*/[A-Za-z0-9][A-Za-z0-9._+-]*$")

CHUNK_BYTES = 4 * 1024 * 1024  # target bytes of one values chunk
MIN_CHUNK_ROWS = 64
MAX_CHUNK_ROWS = 1 << 16
INDEX_CHUNK = 1 << 16  # names / offsets of frame-level sets


def check_key(key: str) -> str:
    """Validate a feature-set key ``<modality>/<name>`` and return it."""
    if not _KEY_RE.match(key):
        raise ValueError(
            f"feature set key {key!r} must look like '<modality>/<name>' (letters, digits, '.', '_', '+', '-'),"
            " e.g. 'audio/whisper-base-utt'"
        )
    return key


def rows_per_chunk(dim: int, dtype: str) -> int:
    """Rows of a ``[rows, dim]`` values chunk: a power of two near :data:`CHUNK_BYTES`."""
    itemsize = np.dtype(dtype).itemsize
    rows = max(1, CHUNK_BYTES // max(1, dim * itemsize))
    rows = 1 << (rows.bit_length() - 1)
    return int(min(MAX_CHUNK_ROWS, max(MIN_CHUNK_ROWS, rows)))


def values_codecs(dtype: str) -> list:
    """No compression for feature values.

    Measured on 100k x 1024 random-normal float16 (benchmarks/store_read.py's data), whole-set read,
    best of 5: none 0.08 s; Blosc-zstd-1 + shuffle 0.17 s at 0.92 x raw; Blosc-LZ4 + shuffle 0.2 s at
    1.00 x. Learned features are close to incompressible and sets are read whole for every training
    run, so read speed wins; the cost is that a set's last chunk is stored whole (<= CHUNK_BYTES).
    """
    return []


def create_arrays(group: zarr.Group, level: str, dim: int, dtype: str) -> None:
    """Create the empty arrays of a new feature set inside ``group``."""
    rows = rows_per_chunk(dim, dtype)
    values_chunk = (rows, dim)
    # NaN fill: a chunk that is missing on disk reads as NaN, which `check` reports.
    group.create_array(
        "values", shape=(0, dim), chunks=values_chunk, dtype=dtype, fill_value=np.nan,
        compressors=values_codecs(dtype) or None,
        dimension_names=("row" if level == "utt" else "frame", "dim"),
    )
    name_chunk = rows if level == "utt" else INDEX_CHUNK
    group.create_array("names", shape=(0,), chunks=(name_chunk,), dtype=str, fill_value="", dimension_names=("row",))
    if level == "frame":
        group.create_array("offsets", shape=(1,), chunks=(INDEX_CHUNK,), dtype="int64", fill_value=0,
                           dimension_names=("row_edge",))
        group.create_array("times", shape=(0,), chunks=(rows,), dtype="float32", fill_value=np.nan,
                           dimension_names=("frame",))
