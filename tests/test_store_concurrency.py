"""Issue 13, items 2 and 3: ``--force`` under a concurrent writer, and locks that work on shared
file systems, on real Zarr stores with real processes and threads.

* A set has a *generation* (a random id written when it is created, also into every write-ahead
  segment): a set deleted and made anew (``--force``) while a writer is active never merges, nor
  counts as done, the old writer's segments; the old writer gets a clear error.
* The lock of a set is a file under ``<store>/.mer-locks/`` holding a POSIX record lock: it survives
  the set directory being deleted and made anew, two threads of one process exclude each other, and
  a failed attempt by one thread never drops the lock another thread holds.
* ``create`` never deletes a directory whose ``zarr.json`` it cannot read or does not understand.
* Segment ids carry host and pid; stale temporaries of other hosts are left alone until they are old.
* A writer racing a consolidator's removal of the empty ``_pending/`` folder never fails.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import HANG_S, SCRIPTS
from mer.store import FeatureStore, StoreError
from mer.store.check import check_store
from mer.store.errors import StoreLockTimeout
from mer.store.lock import locked
from mer.store.segments import Segment, list_segments

WRITER = [sys.executable, str(SCRIPTS / "write_synthetic.py")]
KEY = "audio/syn"
DIM = 16

# a second process that holds a set's lock until its stdin gets a line
HOLD = (
    "import sys\n"
    "from pathlib import Path\n"
    "from mer.store.lock import locked\n"
    "with locked(Path(sys.argv[1]), timeout=60):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.readline()\n"
)
# a second process that tries a set's lock once: prints 'got' or 'busy'
TRY = (
    "import sys\n"
    "from pathlib import Path\n"
    "from mer.store.lock import locked\n"
    "from mer.store.errors import StoreLockTimeout\n"
    "try:\n"
    "    with locked(Path(sys.argv[1]), timeout=float(sys.argv[2])):\n"
    "        print('got', flush=True)\n"
    "except StoreLockTimeout:\n"
    "    print('busy', flush=True)\n"
)


def _seg(names: list[str], value: float = 1.0) -> Segment:
    return Segment(names=names, values=np.full((len(names), DIM), value, np.float32))


def _try_from_another_process(set_dir: Path, timeout: float = 0.3) -> str:
    out = subprocess.run([sys.executable, "-c", TRY, str(set_dir), str(timeout)], capture_output=True, text=True,
                         timeout=HANG_S)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ---- item 2: generations ---------------------------------------------------------------------
def test_force_under_a_concurrent_writer_keeps_the_new_set_clean(tmp_path, prov):
    """(a) A writer process is writing; another run recreates the set with --force and writes its
    own clips. The new set holds only the new run's clips, the old writer's clips are not done in
    it, the old writer stops with an error that says why, and check is clean."""
    s = tmp_path / "s.zarr"
    old = subprocess.Popen(WRITER + [str(s), KEY, "utt", "1500", "--flush-rows", "5", "--consolidate-every", "3",
                                     "--sleep", "0.004"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = FeatureStore(s)
    deadline = time.monotonic() + HANG_S
    while not (KEY in store and len(store[KEY].done_names()) >= 30):
        assert old.poll() is None, old.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    new = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov(model="v2"), force=True)
    with new.writer(flush_rows=4) as w:
        for i in range(10):
            w.add(f"new{i}", np.full(DIM, i, np.float32))
    _, err = old.communicate(timeout=HANG_S)
    fs = store[KEY]
    fs.consolidate()
    want = {f"new{i}" for i in range(10)}
    assert set(fs.names()) == want, sorted(set(fs.names()) - want)[:10]
    assert fs.done_names() == want
    assert fs.provenance.model == "v2"
    np.testing.assert_array_equal(fs.read(sorted(want)), np.stack([np.full(DIM, int(n[3:])) for n in sorted(want)]))
    assert check_store(store) == []
    assert old.returncode != 0, "the old writer must not believe its clips were saved"
    assert "deleted or started anew" in err, err[-2000:]


def test_writer_of_a_recreated_set_is_refused_and_its_clips_are_not_done(store, prov):
    """An old handle's segment after --force: a clear error, and nothing of it counts as done."""
    from mer.store.errors import FeatureSetRecreated

    old = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov())
    old.write_segment(_seg(["a", "b"]))
    new = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov(model="v2"), force=True)
    with pytest.raises(FeatureSetRecreated, match=r"audio/syn.*deleted or started anew"):
        old.write_segment(_seg(["c"]))
    with pytest.raises(FeatureSetRecreated):
        with old.writer(flush_rows=1) as w:
            w.add("d", np.ones(DIM))
    assert new.done_names() == set() and list_segments(new.pending_dir) == []
    assert check_store(store) == []


def test_segment_of_an_older_generation_is_never_merged(store, prov):
    """(d) A segment of the old set that lands in the new set's ``_pending/`` (an old writer's rename
    that passed its check just before the recreate) is not done and is dropped, not merged, by the
    consolidation, also one that waited for the lock while the set was recreated."""
    old = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov())
    seg_id = old.write_segment(_seg(["old0", "old1"], 3.0))
    saved = (old.pending_dir / f"{seg_id}.npz").read_bytes()
    new = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov(model="v2"), force=True)
    new.write_segment(_seg(["new0"], 5.0))
    (new.pending_dir / f"{seg_id}.npz").write_bytes(saved)  # the old writer's late rename
    assert new.done_names() == {"new0"}
    # a consolidation through the OLD handle (it waited for the lock across the recreate)
    assert old.consolidate() == 1
    assert new.names() == ["new0"] and new.done_names() == {"new0"}
    assert list_segments(new.pending_dir) == [] and check_store(store) == []


def test_sets_written_before_generations_keep_working(store, prov):
    """A set whose ledger has no generation, with a pending segment written by the old code (no
    generation in it): the segment's clips are done and merged."""
    fs = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov())
    g = fs.group(mode="r+")
    meta = dict(g.attrs["mer"])
    meta.pop("generation", None)
    g.attrs["mer"] = meta
    fs.pending_dir.mkdir()
    legacy = fs.pending_dir / f"{time.time_ns():020d}-{os.getpid()}-0123abcd.npz"
    with open(legacy, "wb") as f:  # the old segment format: no generation
        np.savez(f, names=np.array(["x"]), values=np.ones((1, DIM), np.float32),
                 failed_names=np.array([], dtype=np.str_), failed_reasons=np.array([], dtype=np.str_))
    fs = store[KEY]
    assert fs.done_names() == {"x"}
    fs.write_segment(_seg(["y"]))
    assert fs.done_names() == {"x", "y"}
    assert fs.consolidate() == 2 and sorted(fs.names()) == ["x", "y"]
    assert check_store(store) == []


@pytest.mark.parametrize("content", [b"\x00\xffnot json", b'{"zarr_format": 99, "node_type": "group"}',
                                     b'{"zarr_format": 3, "node_type": "array", "shape": [1]}',
                                     b'{"zarr_format": 3, "node_type": "group", "attributes": {"title": "mine"}}'])
@pytest.mark.parametrize("force", [False, True])
def test_create_never_deletes_a_directory_it_does_not_understand(store, prov, content, force):
    """(e) ``zarr.json`` unreadable, of a newer format, an array, or a group someone else made:
    ``create`` refuses with an error naming the set and the problem, and deletes nothing."""
    store.create("audio/other", level="utt", dim=DIM, provenance=prov())  # the store exists
    d = store.path / KEY
    d.mkdir()
    (d / "zarr.json").write_bytes(content)
    (d / "precious.bin").write_bytes(b"data")
    with pytest.raises(StoreError, match=r"audio/syn") as err:
        store.create(KEY, level="utt", dim=DIM, provenance=prov(), force=force)
    assert "zarr.json" in str(err.value)
    assert (d / "zarr.json").read_bytes() == content and (d / "precious.bin").read_bytes() == b"data"


def test_create_remakes_a_directory_left_by_an_interrupted_create(store, prov):
    """No ``zarr.json`` at all, or a group without attributes: an interrupted create; made anew."""
    store.create("audio/other", level="utt", dim=DIM, provenance=prov())
    (store.path / "audio" / "bare" / "values").mkdir(parents=True)
    fs = store.create("audio/bare", level="utt", dim=DIM, provenance=prov())
    assert fs.names() == [] and "audio/bare" in store


# ---- item 3: locks ---------------------------------------------------------------------------
def test_lock_survives_the_set_directory_being_replaced(store, prov):
    """(b) A lock held by one process keeps blocking another process's ``locked()`` after the set
    directory is renamed away, deleted and made anew, until the holder releases it."""
    fs = store.create(KEY, level="utt", dim=DIM, provenance=prov())
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fs.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        moved = fs.path.with_name(".moved")
        os.rename(fs.path, moved)
        shutil.rmtree(moved)
        fs.path.mkdir()
        with pytest.raises(StoreLockTimeout, match="audio/syn"):
            with locked(fs.path, timeout=0.3, what="feature set 'audio/syn'"):
                pass
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(timeout=HANG_S) == 0
    with locked(fs.path, timeout=5):
        pass


def test_two_threads_of_one_process_exclude_each_other(store, prov):
    """(c) Threads share the process's POSIX locks: the in-process layer makes them exclude each
    other, and a thread that gives up waiting does not drop the lock another thread holds."""
    fs = store.create(KEY, level="utt", dim=DIM, provenance=prov())
    inside: list[int] = []
    overlaps: list[int] = []
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(15):
                with locked(fs.path, timeout=30):
                    inside.append(k)
                    if len(inside) > 1:
                        overlaps.append(k)
                    time.sleep(0.002)
                    inside.remove(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_S)
    assert not errors and not overlaps

    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locked(fs.path, timeout=5):
            held.set()
            release.wait(HANG_S)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(HANG_S)
        with pytest.raises(StoreLockTimeout):
            with locked(fs.path, timeout=0.2):
                pass
        # the failed attempt above must not have released the process's lock
        assert _try_from_another_process(fs.path) == "busy"
    finally:
        release.set()
        t.join(HANG_S)
    assert _try_from_another_process(fs.path) == "got"


def test_lock_files_do_not_disturb_readers(store, prov):
    """Lock files live outside every set's group, as empty Zarr groups of their own: listing sets,
    opening a set with zarr or xarray, listing the whole store recursively raise and warn nothing."""
    import xarray as xr
    import zarr

    fs = store.create(KEY, level="utt", dim=DIM, dtype="float32", provenance=prov())
    with fs.writer() as w:
        w.add("c0", np.ones(DIM))
    with locked(fs.path):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert store.sets() == [KEY] and FeatureStore(store.path, mode="r").sets() == [KEY]
            g = zarr.open_group(str(fs.path), mode="r")
            assert sorted(k for k, _ in g.members()) == ["names", "values"]
            ds = xr.open_zarr(str(store.path), group=KEY, consolidated=False)
            assert ds["values"].shape == (1, DIM)
            assert sorted(k for k, _ in zarr.open_group(str(store.path), mode="r")["audio"].members()) == ["syn"]
            # the lock folder is an empty Zarr group: even a recursive listing of the root warns nothing
            everything = [k for k, _ in zarr.open_group(str(store.path), mode="r").members(max_depth=None)]
            assert KEY in everything and all(k.startswith((".mer-locks", "audio")) for k in everything)


def test_lock_unavailable_error_names_path_and_file_system(tmp_path):
    """(h) A file system without POSIX locks (NFS mounted ``nolock``...) gives ENOLCK and friends:
    the error says which path, which file system type, and what to do."""
    from mer.store.errors import StoreLockUnavailable
    from mer.store.lock import filesystem_type, lock_unavailable_error

    assert filesystem_type(Path("/proc/self")) == "proc"
    fstype = filesystem_type(tmp_path)
    assert fstype and fstype != "unknown"
    path = tmp_path / ".mer-locks" / "audio" / "x.lock"
    for code in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.ENOSYS):
        err = lock_unavailable_error(path, OSError(code, os.strerror(code)))
        assert isinstance(err, StoreLockUnavailable) and isinstance(err, StoreError)
        assert str(path) in str(err) and fstype in str(err) and os.strerror(code) in str(err)
    assert lock_unavailable_error(path, OSError(errno.EAGAIN, "busy")) is None


# ---- item 3: segment ids, temporaries, the _pending race -------------------------------------
def test_segment_ids_carry_host_and_pid():
    from mer.store.segments import new_segment_id, parse_segment_id

    seg_id = new_segment_id()
    ns, host, pid = parse_segment_id(seg_id)
    assert abs(ns - time.time_ns()) < 60e9 and pid == os.getpid()
    assert host and all(c.isalnum() or c in ".-" for c in host)
    want = "".join(c if c.isascii() and (c.isalnum() or c in ".-") else "-" for c in socket.gethostname())
    assert host == want[:64]
    assert parse_segment_id(f"{time.time_ns():020d}-123-abcdef01")[1:] == (None, 123)  # the old format


def test_stale_temporaries_only_of_this_host_or_very_old(tmp_path):
    """(f) Another host's temporary with a pid that is dead here is kept (the pid is not ours to
    judge), this host's with a dead pid is removed, and any very old one is removed."""
    from mer.store.segments import STALE_TEMP_AGE_S, new_segment_id, remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    own = new_segment_id().split("-")
    host = "-".join(own[1:-2])
    ns = f"{time.time_ns():020d}"
    pending = tmp_path / "_pending"
    pending.mkdir()
    files = {
        "other_host": f".{ns}-gpu-node-17.cluster-{dead.pid}-aaaa0000.tmp",
        "own_dead": f".{ns}-{host}-{dead.pid}-bbbb0000.tmp",
        "own_alive": f".{ns}-{host}-{os.getpid()}-cccc0000.tmp",
        "other_old": f".{ns}-gpu-node-18-{os.getpid()}-dddd0000.tmp",
        "legacy_dead": f".{ns}-{dead.pid}-eeee0000.tmp",
        "legacy_alive": f".{ns}-{os.getpid()}-ffff0000.tmp",
    }
    for name in files.values():
        (pending / name).write_bytes(b"x")
    past = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(pending / files["other_old"], (past, past))
    assert remove_stale_temporaries(pending) == 3
    left = {k for k, v in files.items() if (pending / v).exists()}
    assert left == {"other_host", "own_alive", "legacy_alive"}


def test_write_segment_survives_a_consolidator_removing_the_pending_folder(tmp_path):
    """(g) A consolidator deletes merged segments and removes the empty ``_pending/`` folder while a
    writer writes: the writer never fails, and every segment it wrote was whole."""
    from mer.store.segments import read_segment, write_segment

    set_dir = tmp_path / "set"
    set_dir.mkdir()
    pending = set_dir / "_pending"
    stop = threading.Event()
    seen: list[int] = []

    def consolidator() -> None:
        while not stop.is_set():
            for p in list_segments(pending):
                try:
                    seen.append(len(read_segment(p).names))
                    p.unlink()
                except FileNotFoundError:
                    pass
            try:
                pending.rmdir()
            except OSError:
                pass

    t = threading.Thread(target=consolidator)
    t.start()
    try:
        for i in range(200):
            write_segment(pending, _seg([f"c{i}"]))
    finally:
        stop.set()
        t.join(HANG_S)
    assert all(n == 1 for n in seen)
    rest = [len(json.dumps(read_segment(p).names)) for p in list_segments(pending)]
    assert len(seen) + len(rest) == 200
