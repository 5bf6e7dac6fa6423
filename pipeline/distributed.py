"""Run a stage on dask.distributed: a local cluster (``--workers N``) or an existing scheduler.

Work is split into blocks of clips; each task decodes, extracts and writes its own block as
write-ahead segments of the feature set, so no two workers ever write the same chunk, and the
ledger counts a block's clips only once its segment is committed. The client consolidates the
segments into the arrays at the end (and a rerun picks up whatever a dead run left behind).

The client never loads the model. In order:

1. Paths are made absolute (clip table, store, and the model / weights options when they name a
   local path): a worker may run in another working directory. A model path is still *recorded*
   in the set's provenance as typed, so a cluster run and a single-process run of one command
   share a set.
2. A pre-flight on every worker (:func:`preflight`) checks it sees the clip table, a media file,
   the model folder and the store's file system (a token file the client writes next to the
   store), and reports its host, working directory, dask threads and cores. A worker that cannot
   see one of them is refused before any work, in one error naming the worker and the path.
3. One worker builds the extractor (:func:`probe_stage`, kept in that worker's model cache for its
   blocks) and reports the set key, level, dim and provenance, computed where the model runs (a
   dtype resolved for the worker's device is the worker's). The client creates or reopens the set
   with them (a different provenance is refused unless ``force``, as in a single-process run).
4. Blocks run; each task sizes torch's threads from its own worker's host (:func:`task_threads`).
5. After consolidating, the client checks that the store holds every clip a worker reported done
   (:func:`verify_done`): a worker that wrote into its own copy of the path makes the run fail
   naming those clips, not exit 0 with nothing consolidated.

``--workers N --device cuda`` on a machine with GPUs starts worker *i* with
``CUDA_VISIBLE_DEVICES`` set to the *i*-th visible GPU (round robin when there are fewer GPUs than
workers), so each worker's ``cuda`` is its own device. On a real cluster (``--scheduler``) give
each worker its GPU when starting it (``CUDA_VISIBLE_DEVICES=1 dask worker ...``, or ``dask cuda
worker``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from mer.extractors.base import Extractor
from mer.store import FeatureSet, FeatureStore, Provenance, StoreError
from mer.store.tables import ClipTable, read_clip_table

from .cluster import (  # noqa: F401 - WorkerFacts, WorkerSetupError, gpu_envs, task_threads: public here too
    WorkerFacts,
    WorkerSetupError,
    _wait_for_a_worker,
    for_workers,
    gpu_envs,
    local_cluster,
    preflight,
    task_threads,
)
from .stage import StageReport, StageSpec, build_extractor, create_set, provenance_of, run_names

log = logging.getLogger(__name__)

_CACHE: dict[str, Any] = {}  # per worker process: extractor and clip table of one stage, loaded once
_LOCK = threading.Lock()  # a worker's threads share the cache: one builds, the others wait for it


class LostClipsError(StoreError):
    """Clips reported done by workers that the client's store does not hold."""

    def __init__(self, fs: FeatureSet, missing: dict[str, list[str]]) -> None:
        self.key = fs.key
        self.missing = [n for names in missing.values() for n in names]
        self.workers = sorted(missing)
        shown = ", ".join(self.missing[:20]) + (", ..." if len(self.missing) > 20 else "")
        super().__init__(
            f"{len(self.missing)} clips that worker(s) {', '.join(self.workers)} reported done are not in "
            f"feature set {fs.key!r} at {fs.path}: {shown}. The workers probably wrote to another copy of "
            "that path (a file system the client does not share, or a path that resolves differently "
            "there); these clips are not marked done, so the next run redoes them.")


# ---- in the worker ----------------------------------------------------------------------------
def _spec_key(spec: StageSpec) -> str:
    return json.dumps(asdict(spec), default=str, sort_keys=True)


def worker_stage(spec: StageSpec, threads: int = 0) -> tuple[Extractor, ClipTable]:
    """The stage's extractor and clip table, built once per worker process (and per stage): threads
    of one worker share them, the first one builds while the others wait. A different stage
    replaces them (the old model is released before the new one loads)."""
    ident = _spec_key(spec)
    with _LOCK:
        if _CACHE.get("ident") != ident:
            if threads:
                os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # before a model library starts its pool
            _CACHE.clear()
            extractor = build_extractor(spec)
            _CACHE.update(ident=ident, extractor=extractor, table=read_clip_table(spec.clips))
        return _CACHE["extractor"], _CACHE["table"]


def _my_threads(threads: dict[str, int]) -> tuple[str, int]:
    """This worker's address and torch threads per task (its own host's share when the pre-flight
    did not see it: a worker that joined later)."""
    from distributed import get_worker
    from dask.system import CPU_COUNT

    try:
        worker = get_worker()
    except ValueError:  # not in a worker (called directly): this process's cores
        return "", max(1, int(CPU_COUNT))
    nthreads = int(getattr(worker.state, "nthreads", 1) or 1)
    return worker.address, threads.get(worker.address) or max(1, int(CPU_COUNT) // nthreads)


def _limit_torch_threads(threads: int) -> None:
    """Keep N workers from oversubscribing the cores, if the extractor uses torch at all."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass
class StageInfo:
    """What :func:`probe_stage` reports: where to write and what produced it."""

    key: str
    level: str
    dim: int
    provenance: Provenance
    worker: str


def probe_stage(spec: StageSpec, typed: dict[str, str], threads: dict[str, int]) -> StageInfo:
    """Dask task: build the extractor here (kept for this worker's blocks) and report the set key,
    level, dim and provenance; options made absolute by :func:`for_workers` are reported as typed."""
    address, n = _my_threads(threads)
    extractor, _ = worker_stage(spec, n)
    _limit_torch_threads(n)
    provenance = provenance_of(spec, extractor)
    for name, value in typed.items():
        if name in provenance.config:
            provenance.config[name] = value
    if "model" in typed:
        provenance.model = typed["model"]
    key = spec.set_key(dataclasses.replace(extractor.config, **typed))
    return StageInfo(key=key, level=extractor.config.level, dim=int(extractor.dim), provenance=provenance,
                     worker=address)


def run_block(spec: StageSpec, key: str, names: list[str], threads: dict[str, int]
              ) -> tuple[str, list[str], dict[str, str], dict[str, int], dict[str, str], dict[str, tuple[int, int]]]:
    """Dask task: extract ``names`` into set ``key`` as committed segments.

    Returns (worker address, names done, failed, truncated, partial, faces): see :class:`StageReport`.
    """
    address, n = _my_threads(threads)
    extractor, table = worker_stage(spec, n)
    _limit_torch_threads(n)
    fs = FeatureStore(spec.store)[key]
    report = StageReport(key=key)
    run_names(spec, extractor, fs, table, names, report, consolidate=False)
    done = [name for name in names if name not in report.failed]
    return address, done, report.failed, report.truncated, report.partial, report.faces


# ---- the client -------------------------------------------------------------------------------
def block_size(spec: StageSpec, n_todo: int, n_workers: int) -> int:
    """Clips per task: a few tasks per worker for balance, at most one segment's worth."""
    per = max(1, n_todo // max(1, 4 * n_workers))
    return max(1, min(spec.flush_rows, per))


def run_stage_distributed(spec: StageSpec, table: ClipTable, names: list[str], *, force: bool = False,
                          workers: int = 0, scheduler: str | None = None, progress: bool = True) -> StageReport:
    """Run a stage over ``names`` on a dask cluster (see the module docstring); the client loads no model.

    Raises:
        WorkerSetupError: a worker cannot see a path (before any work).
        LostClipsError: clips a worker reported done are not in the store (after the run).
    """
    from dask.distributed import Client

    t0 = time.perf_counter()
    wspec, typed = for_workers(spec)
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = local_cluster(workers, str(spec.build_config().device))
        client = Client(cluster)
    try:
        if scheduler:
            _wait_for_a_worker(client, scheduler)
        facts = preflight(client, wspec, table, names[:20])
        threads = {f.address: f.threads for f in facts}
        info = client.submit(probe_stage, wspec, typed, threads, pure=False).result()
        log.info("%s: dim %d, level %s (model loaded on worker %s)", info.key, info.dim, info.level, info.worker)
        fs = create_set(spec, info.key, level=info.level, dim=info.dim, provenance=info.provenance, force=force)
        done = set() if force else fs.done_names()
        todo = [n for n in names if n not in done]
        report = StageReport(key=fs.key, total=len(names), skipped=len(names) - len(todo))
        log.info("%s: %d clips, %d already done, %d to extract", fs.key, len(names), report.skipped, len(todo))
        reported = _run_blocks(client, wspec, fs, todo, report, threads, len(facts), progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if todo:
        fs.consolidate()
        verify_done(fs, reported)
        by_address = {f.address: f for f in facts}
        for address, clips in sorted(reported.items()):
            where = by_address[address].where() if address in by_address else address
            log.info("worker %s: %d clips done", where, len(clips))
    report.seconds = time.perf_counter() - t0
    return report


def _run_blocks(client: Any, spec: StageSpec, fs: FeatureSet, todo: list[str], report: StageReport,
                threads: dict[str, int], n_workers: int, progress: bool) -> dict[str, list[str]]:
    """Submit the blocks, fill ``report``; returns the clips each worker reported done."""
    from dask.distributed import as_completed

    reported: dict[str, list[str]] = defaultdict(list)
    if not todo:
        return reported
    size = block_size(spec, len(todo), n_workers)
    blocks = [todo[i:i + size] for i in range(0, len(todo), size)]
    futures = [client.submit(run_block, spec, fs.key, b, threads, pure=False) for b in blocks]
    bar = _progress(progress, fs.key, len(todo))
    try:
        for fut in as_completed(futures):
            address, done, failed, truncated, partial, faces = fut.result()
            reported[address].extend(done)
            report.done += len(done)
            report.failed.update(failed)
            report.truncated.update(truncated)
            report.partial.update(partial)
            report.faces.update(faces)
            if bar:
                bar[0].advance(bar[1], len(done) + len(failed))
    finally:
        if bar:
            bar[0].stop()
    return reported


def verify_done(fs: FeatureSet, reported: dict[str, list[str]]) -> None:
    """Check that ``fs`` holds every clip the workers reported done (``{address: names}``).

    Raises:
        LostClipsError: naming the missing clips (up to 20) and the workers that reported them.
    """
    have = fs.done_names()
    missing = {address: [n for n in names if n not in have] for address, names in reported.items()}
    missing = {address: names for address, names in missing.items() if names}
    if missing:
        raise LostClipsError(fs, missing)


def _progress(enabled: bool, label: str, total: int) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    from rich.progress import Progress

    bar = Progress()
    bar.start()
    return bar, bar.add_task(label, total=total)
