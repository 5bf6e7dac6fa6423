"""Read speed and size of a mer feature store vs MERTools-style per-clip .npy files.

Writes N synthetic utterance-level clips (default 100,000 x 1024 float16) both ways, then reads all
of them back, alternating the two readers for ``--repeats`` rounds, and prints the median times.
Both reads run warm (the files were just written and sit in the page cache); run with ``--cold``
as root to drop the page cache before each read where the kernel allows it.

Last line: ``store_read_speedup: X`` (npy read time / store read time). Goals: >= 20, and
store bytes / raw float16 bytes <= 1.05.

    python benchmarks/store_read.py                 # full size, ~2 min, ~0.5 GB of disk
    python benchmarks/store_read.py --n 20000       # quicker
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from mer.store import FeatureStore, Provenance

KEY = "audio/synthetic"


def folder_bytes(path: Path) -> int:
    """Bytes of every file below ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def drop_caches() -> bool:
    """Drop the page cache (root only); returns whether it worked."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def write_both(root: Path, n: int, dim: int) -> tuple[list[str], np.ndarray, float, float]:
    """Write the same clips as a store and as .npy files; returns names, data and both write times."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
    names = [f"sample_{i:06d}" for i in range(n)]
    t0 = time.perf_counter()
    store = FeatureStore(root / "features.zarr")
    fs = store.create(KEY, level="utt", dim=dim, dtype="float16",
                      provenance=Provenance(extractor="synthetic", config={"n": n, "dim": dim}))
    with fs.writer(flush_rows=4096) as w:
        for i in track(range(n), description="store write"):
            w.add(names[i], data[i])
    t_store = time.perf_counter() - t0
    npy = root / "npy"
    npy.mkdir()
    t0 = time.perf_counter()
    for i in track(range(n), description="npy write  "):
        np.save(npy / f"{names[i]}.npy", data[i])
    t_npy = time.perf_counter() - t0
    return names, data, t_store, t_npy


def read_npy(folder: Path, names: list[str]) -> np.ndarray:
    """MERTools-style: one np.load per clip, then stack."""
    return np.stack([np.load(folder / f"{name}.npy") for name in names])


def read_store(path: Path) -> tuple[list[str], np.ndarray]:
    """All names and vectors of the set, through the public API."""
    fs = FeatureStore(path, mode="r")[KEY]
    return fs.names(), fs.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="clips")
    ap.add_argument("--dim", type=int, default=1024, help="feature dimension")
    ap.add_argument("--repeats", type=int, default=3, help="alternating read rounds; medians are reported")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each read (root)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    root = Path(tempfile.mkdtemp(prefix="mer-store-read-", dir=args.dir))
    try:
        names, data, w_store, w_npy = write_both(root, args.n, args.dim)
        t_npy, t_store = [], []
        for _ in range(args.repeats):
            if args.cold and not drop_caches():
                print("could not drop the page cache; reads are warm")
                args.cold = False
            t0 = time.perf_counter()
            a = read_npy(root / "npy", names)
            t_npy.append(time.perf_counter() - t0)
            if args.cold:
                drop_caches()
            t0 = time.perf_counter()
            got_names, b = read_store(root / "features.zarr")
            t_store.append(time.perf_counter() - t0)
            assert got_names == names and np.array_equal(a, b) and np.array_equal(b, data), "read back differs"
        raw = args.n * args.dim * 2
        store_bytes = folder_bytes(root / "features.zarr")
        npy_bytes = folder_bytes(root / "npy")
        med_npy, med_store = statistics.median(t_npy), statistics.median(t_store)
        print(f"clips: {args.n} x {args.dim} float16 ({raw / 2**20:.0f} MiB raw), "
              f"{'cold' if args.cold else 'warm'} page cache, {args.repeats} rounds")
        print(f"write: store {w_store:.2f} s, npy {w_npy:.2f} s")
        print(f"read all: npy {med_npy:.3f} s ({args.n / med_npy:,.0f} clips/s), "
              f"store {med_store:.3f} s ({args.n / med_store:,.0f} clips/s)")
        print(f"bytes: store {store_bytes:,} ({store_bytes / raw:.3f} x raw), npy files {npy_bytes:,} "
              f"({npy_bytes / raw:.3f} x raw, before file-system block rounding)")
        print(f"store_size_ratio: {store_bytes / raw:.3f}")
        print(f"store_read_speedup: {med_npy / med_store:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
