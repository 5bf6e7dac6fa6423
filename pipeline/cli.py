"""The ``mer`` command. Each command is thin: it parses options and calls one library function.

Heavy imports (torch, zarr, transformers) happen inside the commands, so ``mer --help`` is fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .cli_clips import app as clips_app
from .cli_store import app as store_app
from .cli_extract import app as extract_app
from .cli_finetune import app as finetune_app
from .cli_fuse import app as fuse_app
from .cli_selftrain import selftrain_commands
from .logs import setup_logging

app = typer.Typer(
    name="mer",
    help="Multimodal emotion recognition: extract features into a Zarr store, fuse them, predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(extract_app, name="extract", help="Extract video, audio or text features into a store.")
app.add_typer(finetune_app, name="finetune", help="Fine-tune an extractor's model on labelled clips (CLIP, text LMs).")
app.add_typer(fuse_app, name="fuse", help="Train, evaluate and apply fusion models on stored features.")
for _cmd in selftrain_commands.registered_commands:  # selftrain, vote: in their own module
    fuse_app.registered_commands.append(_cmd)
app.add_typer(store_app, name="store", help="Inspect, check, import and export feature stores.")
app.add_typer(clips_app, name="clips", help="Build and check clip tables.")


@app.callback()
def _root(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v info, -vv debug logging.")) -> None:
    setup_logging(verbose)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the clip table, labels and store."),
    data: Path = typer.Option(None, "--data", help="RAVDESS-style sample folder (default: bundled examples/ravdess)."),
    whisper_seconds: float = typer.Option(0.0, help="Whisper encoder input length: 0 = each clip padded to its own "
                                          "whole seconds (fast), 30 = Whisper's native padded input."),
) -> None:
    """Run the end-to-end demo on the bundled RAVDESS sample."""
    from .demo import run_demo

    raise typer.Exit(run_demo(out, data, whisper_seconds))


def _unwind_on_sigterm() -> None:
    """Make SIGTERM (what batch schedulers and ``kill`` send before SIGKILL) unwind like Ctrl-C.

    The handler raises ``SystemExit(143)``, so ``finally`` blocks run: a running extraction commits
    the clips it has buffered (and merges its segments) instead of losing them. A second SIGTERM
    during that clean-up is ignored.
    """
    import logging
    import signal

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logging.getLogger("mer").warning("terminated (SIGTERM): committing what is done, then exiting")
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """Console-script entry point: expected errors print one clear line and exit 1.

    ``ValueError`` covers bad options and inputs found deep in a library call (unknown class,
    a pool clip never extracted ...); ``-vv`` also logs its traceback.
    """
    import logging

    from mer.extractors.base import ModelLoadError
    from mer.store.errors import StoreError
    from mer.store.tables import TableError

    _unwind_on_sigterm()
    try:
        app()
    except (StoreError, TableError, ModelLoadError, OSError, ValueError) as exc:
        logging.getLogger("mer").debug("traceback", exc_info=True)
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
