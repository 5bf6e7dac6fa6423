"""Advisory locks of a feature store: one lock file per feature set, plus one for the store.

Where the locks live: each lock is the ``zarr.json`` of an empty Zarr group under
``<store>/.mer-locks/``: ``.mer-locks/<modality>/<name>/zarr.json`` for a set and
``.mer-locks/zarr.json`` for the store (creating and deleting sets). So the lock folder is an
ordinary (empty) Zarr group and plain ``zarr`` / ``xarray`` listings, recursive ones included, see
nothing they do not recognise. The files are written once (atomically, never rewritten: a rename
would put the lock on another inode) and only ever locked afterwards. They are outside every set's
directory, so a lock survives the set being deleted and made anew (``--force``): whoever waits for
it waits for the same file, never for a directory that was renamed away. They live inside the store
(not beside it), so every host that mounts the store sees the same files. Lock files are never
deleted (deleting a lock file while another process waits on it would let two processes lock two
different files). :meth:`FeatureStore.sets` skips ``.mer-locks``.

How they lock: a POSIX record lock (``fcntl.lockf``) on the whole file, opened read-write. Unlike
``flock(2)`` these work on NFSv3/v4 (through the lock manager) and on Lustre, and the kernel drops
them when the holder dies, so a SIGKILL never leaves a stale lock. A file system that refuses them
(``ENOLCK``, ``EOPNOTSUPP``...) gives :class:`StoreLockUnavailable` naming the path and the file
system type, before any work.

POSIX record locks belong to the *process*, not to a descriptor: two threads of one process (dask
runs several per worker) would not exclude each other, and closing *any* descriptor of the lock
file would drop the lock the process holds. So each process keeps a registry keyed by the lock
file's real path: a thread waits there for the other threads of its process first, the process
opens one descriptor per held lock file, and closes it only when its last holder leaves. Nothing
else in a mer process may open a lock file. A thread may take a lock it already holds again
(nested ``with`` blocks); a shared hold cannot be upgraded to an exclusive one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError, StoreLockTimeout, StoreLockUnavailable

log = logging.getLogger(__name__)

LOCK_DIR = ".mer-locks"  # under the store root
LOCK_FILE = "zarr.json"  # each lock file is an empty Zarr group's metadata
_GROUP_JSON = b'{"zarr_format": 3, "node_type": "group", "attributes": {}}'
# errno values meaning "this file system does not do POSIX locks", as opposed to "someone holds it"
LOCK_UNAVAILABLE_ERRNOS = frozenset({errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK})
_MOUNTS = Path("/proc/self/mounts")


@dataclass
class _Held:
    """What this process holds on one lock file."""

    fd: int | None = None  # the process's only descriptor of the file while held
    exclusive: bool = False
    count: int = 0  # holders in this process (nested holds of one thread count each)
    owner: int | None = None  # thread holding it exclusively
    readers: dict[int, int] = field(default_factory=dict)  # thread -> shared holds
    acquiring: bool = False  # a thread is waiting for the file lock itself


_COND = threading.Condition()
_HELD: dict[str, _Held] = {}


def _reset_after_fork() -> None:
    """A forked child holds none of its parent's record locks: forget them (closing the copies)."""
    global _COND
    for held in _HELD.values():
        if held.fd is not None:
            with contextlib.suppress(OSError):
                os.close(held.fd)  # releases nothing: record locks are not inherited by fork
    _HELD.clear()
    _COND = threading.Condition()


os.register_at_fork(after_in_child=_reset_after_fork)


def set_lock_path(set_dir: Path) -> Path:
    """Lock file of the feature set in directory ``<store>/<modality>/<name>``."""
    set_dir = Path(set_dir)
    return set_dir.parent.parent / LOCK_DIR / set_dir.parent.name / set_dir.name / LOCK_FILE


def store_lock_path(root: Path) -> Path:
    """Lock file of the store itself (held while sets are created or deleted)."""
    return Path(root) / LOCK_DIR / LOCK_FILE


@contextlib.contextmanager
def locked(directory: Path, *, exclusive: bool = True, timeout: float = 600.0, what: str = "") -> Iterator[None]:
    """Hold the lock of the feature set in ``directory`` for the duration of the ``with`` block.

    Args:
        directory: the set's directory ``<store>/<modality>/<name>`` (it need not exist: the lock
            is the file :func:`set_lock_path`, which outlives the directory).
        exclusive: exclusive (writer) or shared lock.
        timeout: seconds to wait before raising :class:`StoreLockTimeout`; 0 means try once.
        what: a description used in the error messages.
    """
    with locked_file(set_lock_path(directory), exclusive=exclusive, timeout=timeout, what=what or str(directory)):
        yield


@contextlib.contextmanager
def locked_store(root: Path, *, timeout: float = 600.0) -> Iterator[None]:
    """Hold the store's own lock (creating or deleting a set) for the ``with`` block."""
    with locked_file(store_lock_path(root), timeout=timeout, what=f"store {root}"):
        yield


@contextlib.contextmanager
def locked_file(path: Path, *, exclusive: bool = True, timeout: float = 600.0, what: str = "") -> Iterator[None]:
    """Hold a POSIX record lock on the file ``path`` (created if needed) for the ``with`` block.

    Waits first for the other threads of this process, then for other processes, ``timeout``
    seconds in all. Raises :class:`StoreLockTimeout` when it cannot get the lock in time and
    :class:`StoreLockUnavailable` when the file system does not support the lock.
    """
    path = Path(path)
    if path.name == LOCK_FILE:
        _ensure_group_files(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    deadline = time.monotonic() + timeout
    _acquire(key, exclusive, deadline, timeout, what or str(path))
    try:
        yield
    finally:
        _release(key, exclusive)


def _ensure_group_files(path: Path) -> None:
    """Make ``path`` (a ``zarr.json``) and those of its parent folders up to ``.mer-locks`` exist as
    empty Zarr groups. Each is written to a temporary name and hard-linked into place, which fails
    when it already exists (also on NFS): a file is never seen half-written nor replaced."""
    folder = path.parent
    todo = [folder]
    while folder.name != LOCK_DIR and folder != folder.parent:
        folder = folder.parent
        todo.append(folder)
    for folder in reversed(todo):  # .mer-locks first, so a listing never meets a folder without zarr.json
        target = folder / LOCK_FILE
        if target.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{LOCK_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_GROUP_JSON)
            os.link(tmp, target)
        except FileExistsError:
            pass  # another process made it first
        finally:
            tmp.unlink(missing_ok=True)


def _acquire(key: str, exclusive: bool, deadline: float, timeout: float, what: str) -> None:
    me = threading.get_ident()
    with _COND:
        while True:
            held = _HELD.setdefault(key, _Held())
            if held.count and held.exclusive and held.owner == me:  # nested hold of this thread
                held.count += 1
                if not exclusive:
                    held.readers[me] = held.readers.get(me, 0) + 1
                return
            if exclusive and held.readers.get(me):
                raise StoreError(f"{what}: this thread holds a shared lock and asked for an exclusive one")
            if held.count and not held.exclusive and not exclusive:  # another shared holder
                held.count += 1
                held.readers[me] = held.readers.get(me, 0) + 1
                return
            if not held.count and not held.acquiring:
                held.acquiring = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreLockTimeout(f"could not lock {what} within {timeout:.0f}s: another thread of this "
                                       "process holds it")
            _COND.wait(min(remaining, 0.5))
    try:
        fd = _lock_process_wide(Path(key), exclusive, deadline, timeout, what)
    except BaseException:
        with _COND:
            held.acquiring = False
            if _HELD.get(key) is held and not held.count:
                del _HELD[key]
            _COND.notify_all()
        raise
    with _COND:
        held.acquiring = False
        held.fd, held.exclusive, held.count = fd, exclusive, 1
        held.owner = me if exclusive else None
        held.readers = {} if exclusive else {me: 1}
        _COND.notify_all()


def _lock_process_wide(path: Path, exclusive: bool, deadline: float, timeout: float, what: str) -> int:
    """Open the lock file and take the record lock, polling until ``deadline``; returns the descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    delay = 0.01
    try:
        while True:
            try:
                fcntl.lockf(fd, mode | fcntl.LOCK_NB)
                return fd
            except OSError as exc:
                unavailable = lock_unavailable_error(path, exc)
                if unavailable is not None:
                    raise unavailable from exc
                if exc.errno not in _BUSY_ERRNOS:
                    raise
            if time.monotonic() >= deadline:
                raise StoreLockTimeout(f"could not lock {what} within {timeout:.0f}s: another mer process holds it")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    except BaseException:
        os.close(fd)  # no other descriptor of this file is open in this process: nothing else is dropped
        raise


def _release(key: str, exclusive: bool) -> None:
    me = threading.get_ident()
    with _COND:
        held = _HELD[key]
        held.count -= 1
        if not exclusive:
            left = held.readers.get(me, 0) - 1
            if left > 0:
                held.readers[me] = left
            else:
                held.readers.pop(me, None)
        if held.count == 0:
            fd, held.fd, held.owner, held.readers = held.fd, None, None, {}
            if fd is not None:
                os.close(fd)  # drops the record lock; done under _COND so no new holder sees it held
            del _HELD[key]
            _COND.notify_all()


def lock_unavailable_error(path: Path, exc: OSError) -> StoreLockUnavailable | None:
    """The error to raise when taking a lock on ``path`` failed with ``exc``, if ``exc`` means the
    file system does not support POSIX locks (``None`` when it means something else, e.g. busy)."""
    if exc.errno not in LOCK_UNAVAILABLE_ERRNOS:
        return None
    return StoreLockUnavailable(path, filesystem_type(Path(path)), exc)


def filesystem_type(path: Path) -> str:
    """Type of the file system holding ``path`` (``nfs4``, ``lustre``, ``ext4``...), from
    ``/proc/self/mounts``; ``"unknown"`` where that cannot be read."""
    target = Path(os.path.realpath(path))
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        lines = _MOUNTS.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "unknown"
    best, fstype = -1, "unknown"
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = _unescape(parts[1])
        if target == Path(mount) or Path(mount) in target.parents:
            if len(mount) > best:
                best, fstype = len(mount), parts[2]
    return fstype


def _unescape(field: str) -> str:
    """``/proc/self/mounts`` writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field
