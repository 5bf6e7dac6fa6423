"""Setting up a dask cluster for a stage: paths the workers can use, a pre-flight on every worker,
threads per task from each worker's own host, and one GPU per local worker.

Used by :mod:`.distributed`; everything here runs before any clip is extracted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mer.store.tables import ClipTable

from .stage import StageSpec

log = logging.getLogger(__name__)

PATH_OPTIONS = ("model", "pretrained")  # config fields that may name a local file or folder
WORKER_WAIT_S = 300.0  # how long the client waits for a scheduler's first worker
TOKEN_PREFIX = ".mer-preflight-"


class WorkerSetupError(OSError):
    """A worker cannot run the stage (it does not see a path the client sees, or none is there)."""



# ---- paths ------------------------------------------------------------------------------------
def for_workers(spec: StageSpec) -> tuple[StageSpec, dict[str, str]]:
    """``spec`` with absolute clip table and store paths, and absolute model / weights options
    where they name an existing local path; also ``{option: value as typed}`` for those options."""
    config = dict(spec.config)
    typed: dict[str, str] = {}
    for name in PATH_OPTIONS:
        value = config.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value) and os.path.exists(value):
            config[name] = os.path.abspath(value)
            typed[name] = value
    spec = dataclasses.replace(spec, clips=Path(os.path.abspath(spec.clips)), store=Path(os.path.abspath(spec.store)),
                               config=config)
    return spec, typed


def _nearest_dir(path: Path) -> Path:
    """``path`` if it is a folder, else its nearest existing ancestor."""
    p = path
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


# ---- pre-flight -------------------------------------------------------------------------------
@dataclass
class WorkerFacts:
    """What one worker reports in the pre-flight.

    Attributes:
        address: the worker's address at the scheduler.
        host, pid, cwd: where it runs.
        nthreads: its dask threads (tasks it runs at once).
        cpus: cores usable on its host (dask's count: affinity and cgroup quota).
        threads: torch threads each of its tasks uses (:func:`task_threads`).
        problems: paths it cannot see or write (empty: all is well).
    """

    address: str
    host: str
    pid: int
    cwd: str
    nthreads: int
    cpus: int
    threads: int = 1
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """The worker sees everything the stage needs."""
        return not self.problems

    def where(self) -> str:
        """``address (host H, pid P, cwd D)``: for messages."""
        return f"{self.address} (host {self.host}, pid {self.pid}, cwd {self.cwd})"


def worker_facts(checks: list[tuple[str, str, str]], token: tuple[str, str] | None,
                 dask_worker: Any = None) -> WorkerFacts:
    """Run on a worker by :func:`preflight` (``client.run``): its facts and what it cannot see.

    ``checks`` are ``(what, path, kind)`` with kind ``file``, ``dir`` (must be writable) or
    ``exists``; ``token`` is ``(path, content)`` of the client's same-file-system token.
    """
    from dask.system import CPU_COUNT

    problems = []
    for what, path, kind in checks:
        p = Path(path)
        if kind == "file" and not (p.is_file() and os.access(p, os.R_OK)):
            problems.append(f"cannot read the {what} {path}")
        elif kind == "dir" and not (p.is_dir() and os.access(p, os.W_OK | os.X_OK)):
            problems.append(f"cannot write in the {what} {path}")
        elif kind == "exists" and not p.exists():
            problems.append(f"cannot see the {what} {path}")
    if token is not None:
        path, content = token
        try:
            seen = Path(path).read_text(encoding="utf-8")
        except OSError:
            seen = None
        if seen != content:
            problems.append(f"does not see the file {path} the client just wrote next to the store: it does not "
                            f"share the client's file system there")
    state = getattr(dask_worker, "state", dask_worker)
    nthreads = int(getattr(state, "nthreads", 1) or 1)
    address = getattr(dask_worker, "address", "") or ""
    return WorkerFacts(address=address, host=socket.gethostname(), pid=os.getpid(), cwd=os.getcwd(),
                       nthreads=nthreads, cpus=int(CPU_COUNT), problems=problems)


def task_threads(facts: list[WorkerFacts]) -> dict[str, int]:
    """Torch threads per task, by worker address: the cores of the worker's host divided among all
    dask threads of the workers on that host (at least 1), so the host is used but not
    oversubscribed whatever ``--nthreads`` / ``--nworkers`` each worker was started with."""
    per_host: dict[str, int] = defaultdict(int)
    for f in facts:
        per_host[f.host] += max(1, f.nthreads)
    return {f.address: max(1, f.cpus // per_host[f.host]) for f in facts}


def _sample_media(table: ClipTable, names: list[str]) -> tuple[str, Path] | None:
    """A clip among ``names`` whose media file the client sees, to ask the workers about."""
    for name in names:
        for column in ("audio", "video"):
            if column in table.columns and table.column(column)[name]:
                path = table.media_path(name, column)
                if path is not None and path.is_file():
                    return name, Path(os.path.abspath(path))
    return None


def preflight(client: Any, spec: StageSpec, table: ClipTable, names: list[str]) -> list[WorkerFacts]:
    """Ask every worker whether it sees what the stage needs (``spec``'s paths must be absolute:
    :func:`for_workers`) and how many threads it has; sets each one's :attr:`WorkerFacts.threads`.

    Raises:
        WorkerSetupError: naming each worker that cannot see a path, and the path; or no worker.
    """
    checks = [("clip table", str(spec.clips), "file")]
    for name in PATH_OPTIONS:
        value = spec.config.get(name)
        if isinstance(value, str) and value and os.path.isabs(value) and os.path.exists(value):
            checks.append((name, value, "exists"))
    sample = _sample_media(table, names)
    if sample is not None:
        checks.append((f"media file of clip {sample[0]}", str(sample[1]), "file"))
    anchor = _nearest_dir(Path(spec.store))
    checks.append(("store" if anchor == Path(spec.store) else "folder that will hold the store", str(anchor), "dir"))
    token_path = anchor / f"{TOKEN_PREFIX}{uuid.uuid4().hex}"
    token: tuple[str, str] | None = (str(token_path), uuid.uuid4().hex)
    try:
        token_path.write_text(token[1], encoding="utf-8")
    except OSError as exc:  # a folder the client cannot write: the store cannot be created either
        log.debug("no pre-flight token in %s: %s", anchor, exc)
        token = None
    try:
        found = client.run(worker_facts, checks, token)
    finally:
        token_path.unlink(missing_ok=True)
    facts = []
    for address, f in sorted(found.items()):
        f.address = address  # as the scheduler knows it
        facts.append(f)
    if not facts:
        raise WorkerSetupError(f"no dask worker is connected to the scheduler {_scheduler_address(client)}")
    for f in facts:
        f.threads = task_threads(facts)[f.address]
        log.info("worker %s: %d dask thread(s), %d cores, %d torch thread(s) per task", f.where(), f.nthreads,
                 f.cpus, f.threads)
    bad = [f for f in facts if not f.ok]
    if bad:
        lines = [f"  worker {f.where()} {problem}" for f in bad for problem in f.problems]
        raise WorkerSetupError(
            f"{len(bad)} of {len(facts)} dask workers cannot run this stage:\n" + "\n".join(lines)
            + "\nEvery worker must see the clip table, the media, the model and the store at the same absolute "
            "paths as the client (a shared file system).")
    return facts


def _wait_for_a_worker(client: Any, scheduler: str) -> None:
    """Wait (at most :data:`WORKER_WAIT_S`) until the scheduler has a worker."""
    if client.scheduler_info().get("workers"):
        return
    log.info("waiting up to %.0f s for a worker at %s", WORKER_WAIT_S, scheduler)
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except TimeoutError:
        raise WorkerSetupError(f"no dask worker connected to the scheduler {scheduler} within "
                               f"{WORKER_WAIT_S:.0f} s") from None


def _scheduler_address(client: Any) -> str:
    return str(getattr(client.scheduler, "address", "") or "")


# ---- GPUs -------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_envs(device: str, workers: int, gpus: list[str]) -> list[dict[str, str]] | None:
    """Environment of each local worker for ``--device cuda``: worker *i* sees GPU ``gpus[i % len]``
    only; ``None`` (no per-worker environment) for another device, an explicit ``cuda:K`` (the
    user's choice for every worker) or no GPU."""
    if device != "cuda" or not gpus or workers < 1:
        return None
    if workers > len(gpus):
        log.warning("%d workers share %d GPU(s) (round robin)", workers, len(gpus))
    return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(workers)]


def local_cluster(workers: int, device: str = "cpu", gpus: list[str] | None = None) -> Any:
    """A local cluster of ``workers`` processes with one thread each; with ``device == "cuda"``
    each worker gets its own GPU (:func:`gpu_envs`; ``gpus`` default: :func:`visible_gpus`)."""
    from dask.distributed import LocalCluster

    if device == "cuda" and gpus is None:
        gpus = visible_gpus()
    envs = gpu_envs(device, workers, gpus or [])
    if envs is None:
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": ":0"}}
    options = {"host": "127.0.0.1", "nthreads": 1, "dashboard": False, "dashboard_address": None,
               "silence_logs": logging.WARNING, "memory_limit": int(MEMORY_LIMIT // len(envs))}
    specs = {i: {"cls": Nanny, "options": {**options, "env": env}} for i, env in enumerate(envs)}
    log.info("local cluster: %s",
             ", ".join(f"worker {i} on GPU {e['CUDA_VISIBLE_DEVICES']}" for i, e in enumerate(envs)))
    return SpecCluster(scheduler=scheduler, workers=specs)
