"""Issue 8, case 10: the disk fills up, or the store is read-only, during ``mer extract``.

Two ways to make writes fail for real (root ignores permission bits, so ``chmod`` proves nothing):

* portable: the child process runs under ``RLIMIT_FSIZE`` of 1 MiB (SIGXFSZ ignored), so any file
  write past 1 MiB fails with EFBIG, the way a full disk fails a write; a values chunk of this set
  is 4 MiB, so the first consolidation fails while the small write-ahead segments succeed;
* where the test may mount (root in a privileged container): a 3 MiB tmpfs (ENOSPC), then the
  same tmpfs remounted read-only (EROFS); skipped elsewhere.

The extractor is ``table`` (vectors from a CSV: no model to load, so each run takes a second);
what is under test is the store's write path, which every extractor shares. Each time: one clear
line naming the set and saying what was kept, exit 1, no traceback, the clips committed before
stay readable and correct, the only findings of ``mer store check`` are the recoverable ones, and a
rerun with room finishes the rest, to the same values.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    assert_check_passes,
    feature_table,
    flat,
    mer,
    ok,
    report_counts,
    write_table,
)
from mer.store import FeatureStore

KEY = "audio/feats"
N = 300
RECOVERABLE = ("write-ahead segments not consolidated", "uncommitted rows beyond the ledger")


@pytest.fixture
def job(tmp_path):
    names = [f"c{i:04d}" for i in range(N)]
    table = write_table(tmp_path / "clips.csv", [{"name": n, "audio": f"{n}.wav"} for n in names])
    vecs = feature_table(tmp_path / "feats.csv", names)
    ref = {n: v.astype(np.float16).astype(np.float32) for n, v in vecs.items()}  # stored float16
    return ("extract", "audio", table, "--store"), ("-e", "table", "-m", tmp_path / "feats.csv", "--set", "feats"), ref


def _small_files() -> None:
    """preexec_fn: no file may grow past 1 MiB (EFBIG instead of SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def _assert_kept(store: Path, ref: dict[str, np.ndarray], n_committed: int) -> None:
    """The committed clips read back exactly; the check finds only what a rerun or repair merges."""
    fs = FeatureStore(store)[KEY]
    names = fs.names()
    assert len(names) == len(set(names)) == n_committed
    if names:
        np.testing.assert_array_equal(fs.read(names, dtype="float32"), np.stack([ref[n] for n in names]))
    res = mer("store", "check", store)
    assert "Traceback" not in res.stderr
    for line in res.stderr.strip().splitlines():
        assert any(r in line for r in RECOVERABLE), line


def _assert_finished(store: Path, ref: dict[str, np.ndarray]) -> None:
    fs = FeatureStore(store)[KEY]
    names = sorted(ref)
    assert sorted(fs.names()) == names and fs.failures() == {} and not fs.pending_dir.exists()
    np.testing.assert_array_equal(fs.read(names, dtype="float32"), np.stack([ref[n] for n in names]))
    assert_check_passes(store)


def test_case10_file_size_limit_mid_run(tmp_path, job):
    head, tail, ref = job
    store = tmp_path / "s.zarr"
    ok(mer(*head, store, *tail, "--limit", "100"))  # 100 clips committed with room to spare

    res = mer(*head, store, *tail, preexec_fn=_small_files)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    msg = flat(res)
    assert f"error: cannot write feature set '{KEY}' in {store}: File too large" in msg
    assert "clips not yet merged stay committed in the write-ahead segments" in msg
    _assert_kept(store, ref, 100)
    fs = FeatureStore(store)[KEY]
    assert len(fs.done_names()) == N  # the other 200 are safe in write-ahead segments

    res = ok(mer(*head, store, *tail))  # room again: nothing is recomputed, the segments are merged
    assert report_counts(res) == (N, 0, N, 0)
    _assert_finished(store, ref)


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MiB tmpfs at tmp_path/mnt (root with mount rights only); unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True,
                         check=False)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def test_case10_disk_full_then_read_only(job, tmpfs):
    head, tail, ref = job
    store = tmpfs / "s.zarr"
    res = mer(*head, store, *tail)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    msg = flat(res)
    assert f"error: cannot write feature set '{KEY}' in {store}: No space left on device" in msg
    assert "the next run or `mer store check --fix` merges them once the store can be written" in msg
    _assert_kept(store, ref, 0)
    assert len(FeatureStore(store)[KEY].done_names()) == N

    _remount(tmpfs, "size=64m")  # room: the rerun merges, recomputes nothing
    assert report_counts(ok(mer(*head, store, *tail))) == (N, 0, N, 0)
    _assert_finished(store, ref)

    # a read-only store is refused before any work, and still reads and checks
    (tmpfs / "more.csv").write_text("name,audio\nnew,new.wav\n")
    _remount(tmpfs, "ro")
    res = mer("extract", "audio", tmpfs / "more.csv", "--store", store, *tail)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: store {store} is not writable (read-only file system or no permission); nothing was written" in flat(res)
    _assert_finished(store, ref)
    assert ok(mer("store", "info", store)).returncode == 0
