"""The one error type the decoders raise for bad input."""

from __future__ import annotations

import re
from pathlib import Path

# decord prefixes its messages with "[hh:mm:ss] /path/to/source.cc:123: "
_DECORD_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: ")


class DecodeError(ValueError):
    """A media file cannot be decoded (missing, empty, corrupt, no track, no samples/frames).

    Attributes:
        name: the clip name.
        problem: what went wrong, without the clip name.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"clip {name!r}: {problem}")
        self.name = name
        self.problem = problem


def check_file(name: str, path: Path) -> Path:
    """``path`` as a :class:`Path` when it is a non-empty regular file, else :class:`DecodeError`."""
    path = Path(path)
    try:
        if not path.exists():
            raise DecodeError(name, f"file not found: {path}")
        if not path.is_file():
            raise DecodeError(name, f"not a regular file: {path}")
        if path.stat().st_size == 0:
            raise DecodeError(name, f"empty file (0 bytes): {path}")
    except OSError as exc:  # permission denied on a parent, a broken mount...
        raise DecodeError(name, f"cannot access {path}: {exc}") from exc
    return path


def reason(exc: BaseException) -> str:
    """Short one-line text for a decoder error: its type and FFmpeg's / decord's message."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    text = _DECORD_PREFIX.sub("", (text.splitlines() or [""])[0])[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
