"""Logging set-up for the command line: rich output on stderr."""

from __future__ import annotations

import logging


def setup_logging(verbose: int = 0) -> None:
    """Route library logging through rich; ``verbose`` 0 = warnings, 1 = info, 2 = debug."""
    from rich.logging import RichHandler

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(show_path=False, rich_tracebacks=False)], force=True)
