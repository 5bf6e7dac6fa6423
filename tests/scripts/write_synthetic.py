"""Write deterministic synthetic clips into a feature set; used by tests as a separate process.

usage: write_synthetic.py STORE KEY LEVEL N [--start S] [--flush-rows R] [--sleep SEC] [--consolidate-every K]

Clip i is named ``clip{i:06d}``; its vectors are a pure function of i (see ``expected``), so a test
can check every value after kills and reruns. Clips already done are skipped (resume).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mer.store import FeatureStore, Provenance

DIM = 16


def expected(i: int, level: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectors (and frame times) of clip ``i``."""
    rng = np.random.default_rng(i)
    if level == "utt":
        return rng.standard_normal(DIM).astype(np.float32), None
    t = 1 + i % 7
    return rng.standard_normal((t, DIM)).astype(np.float32), np.arange(t, dtype=np.float32) * 0.5


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("key")
    ap.add_argument("level")
    ap.add_argument("n", type=int)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--flush-rows", type=int, default=50)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--consolidate-every", type=int, default=4)
    a = ap.parse_args(argv)
    store = FeatureStore(a.store)
    fs = store.create(a.key, level=a.level, dim=DIM, dtype="float32",
                      provenance=Provenance(extractor="synthetic", config={"dim": DIM}, packages={}, project={}))
    done = fs.done_names()
    with fs.writer(flush_rows=a.flush_rows, consolidate_every=a.consolidate_every) as w:
        for i in range(a.start, a.start + a.n):
            name = f"clip{i:06d}"
            if name in done:
                continue
            vec, times = expected(i, a.level)
            w.add(name, vec, times=times)
            if a.sleep:
                time.sleep(a.sleep)
    print(f"wrote {w.n_written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
