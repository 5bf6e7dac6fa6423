"""Advisory inter-process locks on feature-set directories.

The lock is ``flock(2)`` on the set's directory itself, so a clean store holds no lock files that
plain Zarr readers would trip over. It works between processes (and dask workers) on one machine
and on network file systems that implement ``flock``; it is released by the kernel when the
holder dies, so a SIGKILL never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreLockTimeout


@contextlib.contextmanager
def locked(directory: Path, *, exclusive: bool = True, timeout: float = 600.0, what: str = "") -> Iterator[None]:
    """Hold ``flock`` on ``directory`` for the duration of the ``with`` block.

    Args:
        directory: an existing directory (the feature set's group directory).
        exclusive: exclusive (writer) or shared lock.
        timeout: seconds to wait before raising :class:`StoreLockTimeout`; 0 means try once.
        what: a description used in the timeout message.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    raise StoreLockTimeout(
                        f"could not lock {what or directory} within {timeout:.0f}s: another mer process holds it"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
