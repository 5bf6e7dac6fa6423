"""Run a stage on dask.distributed: a local cluster (``--workers N``) or an existing scheduler.

Work is split into blocks of clips; each task decodes, extracts and writes its own block as
write-ahead segments of the feature set, so no two workers ever write the same chunk, and the
ledger counts a block's clips only once its segment is committed. The client consolidates the
segments into the arrays at the end (and a rerun picks up whatever a dead run left behind).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

from mer.store import FeatureSet, FeatureStore

from .stage import StageReport, StageSpec, build_extractor, run_names

log = logging.getLogger(__name__)

_CACHE: dict[str, Any] = {}  # per worker process: extractor and clip table, loaded once


def _spec_key(spec: StageSpec) -> str:
    return json.dumps(asdict(spec), default=str, sort_keys=True)


def run_block(spec: StageSpec, key: str, names: list[str],
              threads: int) -> tuple[int, dict[str, str], dict[str, int], dict[str, str]]:
    """Dask task: extract ``names`` into set ``key`` as committed segments.

    Returns (done, failed, truncated, partial): see :class:`StageReport`.
    """
    from mer.store.tables import read_clip_table

    ident = _spec_key(spec)
    if _CACHE.get("ident") != ident:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before any model library starts its pool
        _CACHE.clear()
        _CACHE.update(ident=ident, extractor=build_extractor(spec), table=read_clip_table(spec.clips))
        _limit_torch_threads(threads)
    fs = FeatureStore(spec.store)[key]
    report = StageReport(key=key)
    run_names(spec, _CACHE["extractor"], fs, _CACHE["table"], names, report, consolidate=False)
    return report.done, report.failed, report.truncated, report.partial


def _limit_torch_threads(threads: int) -> None:
    """Keep N workers from oversubscribing the cores, if the extractor uses torch at all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def block_size(spec: StageSpec, n_todo: int, n_workers: int) -> int:
    """Clips per task: a few tasks per worker for balance, at most one segment's worth."""
    per = max(1, n_todo // max(1, 4 * n_workers))
    return max(1, min(spec.flush_rows, per))


def run_distributed(spec: StageSpec, fs: FeatureSet, todo: list[str], report: StageReport, *,
                    workers: int = 0, scheduler: str | None = None, progress: bool = True) -> None:
    """Extract ``todo`` on a dask cluster; fills ``report``; consolidates the set at the end."""
    from dask.distributed import Client, LocalCluster, as_completed

    if not todo:
        return
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or workers)
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        size = block_size(spec, len(todo), n_workers)
        blocks = [todo[i:i + size] for i in range(0, len(todo), size)]
        futures = [client.submit(run_block, spec, fs.key, b, threads, pure=False) for b in blocks]
        bar = _progress(progress, fs.key, len(todo))
        for fut in as_completed(futures):
            done, failed, truncated, partial = fut.result()
            report.done += done
            report.failed.update(failed)
            report.truncated.update(truncated)
            report.partial.update(partial)
            if bar:
                bar[0].advance(bar[1], done + len(failed))
        if bar:
            bar[0].stop()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    fs.consolidate()


def _progress(enabled: bool, label: str, total: int) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress()
    bar.start()
    return bar, bar.add_task(label, total=total)
