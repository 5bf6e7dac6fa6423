"""Exceptions raised by the feature store. Each message names the set, the clip and the problem."""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Base class of every error the feature store raises on purpose."""


class FeatureSetNotFound(StoreError, KeyError):
    """The store holds no feature set under the requested key."""

    def __init__(self, key: str, available: Sequence[str]) -> None:
        listed = ", ".join(available) if available else "none"
        super().__init__(f"feature set {key!r} not found in store (sets: {listed})")
        self.key = key

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.args[0]


class ProvenanceMismatch(StoreError):
    """Writing into a set whose recorded provenance differs from the writer's."""

    def __init__(self, key: str, differences: dict[str, tuple[object, object]]) -> None:
        lines = [f"  {field}: stored={old!r} new={new!r}" for field, (old, new) in differences.items()]
        super().__init__(
            f"feature set {key!r} was written with a different provenance; refusing to mix them.\n"
            + "\n".join(lines)
            + "\nUse --force (force=True) to start the set anew, or write to another set name."
        )
        self.key = key
        self.differences = differences


class MissingClipsError(StoreError, KeyError):
    """Some requested clip names are not (done) in the feature set."""

    def __init__(self, key: str, missing: Sequence[str], requested: int) -> None:
        shown = ", ".join(missing[:20]) + (", ..." if len(missing) > 20 else "")
        super().__init__(
            f"feature set {key!r} lacks {len(missing)} of {requested} requested clips: {shown}"
        )
        self.key = key
        self.missing = list(missing)

    def __str__(self) -> str:
        return self.args[0]


class ClipValueError(StoreError, ValueError):
    """A clip's vectors have the wrong shape or contain NaN/Inf."""

    def __init__(self, key: str, clip: str, problem: str) -> None:
        super().__init__(f"clip {clip!r} in feature set {key!r}: {problem}")
        self.key = key
        self.clip = clip
        self.problem = problem


class StoreLockTimeout(StoreError, TimeoutError):
    """Another process holds the feature set's lock for longer than we are willing to wait."""


class StoreWriteError(StoreError):
    """The file system refused a write (disk full, read-only, permissions, file too large).

    The message names the set, the store, the system's reason and what became of the work: what
    was committed before stays committed, and a rerun redoes only what was not.
    """

    def __init__(self, key: str, root: object, exc: OSError, consequence: str) -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        super().__init__(f"cannot write feature set {key!r} in {root}: {reason}{where}; {consequence}")
        self.key = key
        self.errno = exc.errno


class StoreLockUnavailable(StoreError):
    """The file system refuses POSIX record locks (``ENOLCK``, ``EOPNOTSUPP``...), e.g. NFS mounted
    with ``nolock`` or without a running lock manager. The message names the lock file and the file
    system type; nothing was written."""

    def __init__(self, path: object, fstype: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc) or type(exc).__name__
        super().__init__(
            f"cannot lock {path}: the {fstype} file system holding it refuses POSIX (fcntl) locks ({reason}); "
            "nothing was written. mer needs them to keep concurrent writers apart: mount the file system with "
            "locking enabled (NFS: not `nolock`, with the lock manager running; Lustre: `flock` or `localflock`), "
            "or put the feature store on a file system that supports locks"
        )
        self.path = path
        self.fstype = fstype
        self.errno = exc.errno


class FeatureSetRecreated(StoreError):
    """The set a writer was writing was deleted, or deleted and started anew (``--force``), by
    another process: what the writer writes now would belong to a set that no longer exists."""

    def __init__(self, key: str, root: object, expected: str, found: str | None, n_clips: int) -> None:
        now = "no longer exists" if found is None else f"is now generation {found or '(legacy)'!r}"
        super().__init__(
            f"feature set {key!r} in {root} was deleted or started anew (--force) by another process while this "
            f"process was writing it (this writer's generation {expected or '(legacy)'!r}; the set {now}): "
            f"the {n_clips} clips of this write are not saved and no clip of this writer counts as done in the "
            "new set; rerun to write them into the current set"
        )
        self.key = key
        self.expected = expected
        self.found = found
