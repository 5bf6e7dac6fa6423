"""`mer extract --scheduler ADDR` against a real dask cluster started from the CLI tools of
``distributed``: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, one of them
in a working directory other than the client's, so paths typed relative to the client's directory
only work if the client ships them absolute.

Checked here: the cluster run equals a single-process run (same clips, same float16 vectors, same
provenance identity, so either can resume the other's set); the client never imports torch (the
model is loaded on a worker, which reports dim, level and provenance); the pre-flight on every
worker (what it sees, its threads) and its clear error naming the worker; the check after the run
that every clip a worker reported done is in the client's store; the model cache of a worker
shared by its threads; and, on a real local cluster without GPUs, that ``--workers N --device
cuda`` starts each worker with its own ``CUDA_VISIBLE_DEVICES``.

About 40-60 s on two cores, most of it importing torch in the CLI runs and in the two workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import HANG_S, SAMPLE, mer_cli, write_csv  # noqa: E402
from mer.store import FeatureStore  # noqa: E402
from mer.store.check import check_store  # noqa: E402
from tiny_models import HIDDEN, build_hubert  # noqa: E402

DASK = Path(sys.executable).parent / "dask"
START_S = 120  # bound on the scheduler and both workers coming up (a loaded 2-core machine is slow, not wrong)
N_CLIPS = 8
OPTS = ("-e", "hf-speech", "-m", "models/hubert", "-O", "layers=last2", "-O", "layer_pool=sum")
SET = "audio/hf-speech-hubert-utt"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "COLUMNS": "1000", "NO_COLOR": "1"}


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process we started (the nanny then stops its worker), then SIGKILL its group."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # each was started in its own session: its group is it and its children (the worker)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A ``dask scheduler`` and two ``dask worker`` processes (one thread each): the scheduler's
    address, the client's folder, and the other worker's folder (a different working directory)."""
    from distributed import Client

    root = tmp_path_factory.mktemp("cluster")
    here, elsewhere = root / "client", root / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    sched_file = root / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args: list[str], cwd: Path, log_name: str) -> None:
        log = open(root / log_name, "w")
        logs.append(log)
        procs.append(subprocess.Popen([str(DASK), *args], cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(sched_file),
               "--no-dashboard"], root, "scheduler.log")
        deadline = time.monotonic() + START_S
        while not sched_file.exists() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (root / "scheduler.log").read_text()
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written whole, but give the writer a moment to close it
        address = json.loads(sched_file.read_text())["address"]
        for i, cwd in enumerate([here, elsewhere]):
            start(["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--name", f"w{i}",
                   "--local-directory", str(root / f"dask-w{i}")], cwd, f"worker{i}.log")
        with Client(address, timeout=START_S, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_S)
        yield address, here, elsewhere
        with Client(address, timeout=30, set_as_default=False) as client:
            client.shutdown()  # scheduler and workers close themselves; _stop then only reaps them
    finally:
        _stop(procs)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def data(cluster):
    """In the client's folder: ``media/`` (FLACs of the bundled sample), ``clips.csv`` naming them by
    paths relative to the table, and ``models/hubert`` (a tiny random HuBERT)."""
    _, here, _ = cluster
    (here / "media").mkdir()
    rows = []
    for p in sorted((SAMPLE / "audio").glob("*.flac"))[:N_CLIPS]:
        shutil.copy(p, here / "media" / p.name)
        rows.append({"name": p.stem, "audio": f"media/{p.name}", "video": ""})
    write_csv(here / "clips.csv", rows)
    (here / "models" / "hubert").mkdir(parents=True)
    build_hubert(here / "models" / "hubert")
    return here, [r["name"] for r in rows]


def mer(cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mer_cli(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=HANG_S,
                          env=_env())


RESUME = """
import sys
from pathlib import Path
from mer.pipeline.decode_audio import AudioDecodeConfig
from mer.pipeline.inputs import DecodeSettings
from mer.pipeline.stage import StageSpec, run_stage
spec = StageSpec(modality="audio", clips=Path("clips.csv"), store=Path("multi.zarr"), extractor="hf-speech",
                 config={"layers": "last2", "layer_pool": "sum", "level": "utt", "device": "cpu",
                         "dtype": "float32", "model": "models/hubert"},
                 decode=DecodeSettings(audio=AudioDecodeConfig(sample_rate=16000, max_seconds=None)))
r = run_stage(spec, scheduler=sys.argv[1], progress=False)
print(r.total, r.skipped, r.done, len(r.failed), "torch" in sys.modules, "transformers" in sys.modules)
"""


def test_scheduler_run_equals_single_process(cluster, data):
    """Relative table, store and model paths typed in the client's folder; a worker elsewhere;
    then the rest of the clips from a Python client that must never import torch."""
    address, _, elsewhere = cluster
    here, names = data
    with ThreadPoolExecutor(max_workers=2) as pool:
        single_f = pool.submit(mer, here, "extract", "audio", "clips.csv", "--store", "single.zarr", *OPTS)
        multi = mer(here, "-v", "extract", "audio", "clips.csv", "--store", "multi.zarr", *OPTS, "--limit", "5",
                    "--scheduler", address)
        single = single_f.result()
    assert single.returncode == 0, single.stdout + single.stderr
    assert multi.returncode == 0, multi.stdout + multi.stderr
    assert not (elsewhere / "multi.zarr").exists()
    # both workers, one of them in the other folder, did blocks: the client logs (-v) what each did
    logged = multi.stdout + multi.stderr
    done_by = re.findall(r"worker (tcp://\S+) .*?: (\d+) clips? done", logged)
    assert len({a for a, _ in done_by}) == 2, logged
    assert sum(int(n) for _, n in done_by) == 5, logged
    assert str(elsewhere) in logged, logged  # the pre-flight logs each worker's folder

    rest = subprocess.run([sys.executable, "-c", RESUME, address], cwd=here, capture_output=True, text=True,
                          timeout=HANG_S, env=_env())
    assert rest.returncode == 0, rest.stdout + rest.stderr
    total, skipped, done, failed, torch_loaded, hf_loaded = rest.stdout.split()[-6:]
    assert (int(total), int(skipped), int(done), int(failed)) == (N_CLIPS, 5, N_CLIPS - 5, 0)
    assert torch_loaded == "False" and hf_loaded == "False", "the client loaded the model"

    a, b = FeatureStore(here / "single.zarr")[SET], FeatureStore(here / "multi.zarr")[SET]
    assert sorted(a.names()) == sorted(b.names()) == sorted(names)
    assert b.dim == HIDDEN and b.level == "utt" and b.dtype == "float16"
    np.testing.assert_allclose(a.read(names, dtype="float32"), b.read(names, dtype="float32"), atol=2e-3, rtol=2e-3)
    assert a.provenance.identity() == b.provenance.identity()
    assert b.provenance.model == "models/hubert"  # recorded as typed, like a single-process run
    assert check_store(FeatureStore(here / "multi.zarr")) == []
    assert not b.pending_dir.exists()


def test_preflight_sees_each_worker(cluster, data, tmp_path):
    """Each worker reports its folder and threads; a path one cannot see is an error naming it."""
    from distributed import Client

    from mer.pipeline.distributed import WorkerSetupError, preflight
    from mer.pipeline.stage import StageSpec
    from mer.store.tables import read_clip_table

    address, here, elsewhere = cluster
    spec = StageSpec(modality="audio", clips=here / "clips.csv", store=tmp_path / "s.zarr", extractor="hf-speech",
                     config={"model": str(here / "models" / "hubert")})
    table = read_clip_table(spec.clips)
    with Client(address, timeout=START_S, set_as_default=False) as client:
        facts = preflight(client, spec, table, table.names[:1])
        assert sorted(f.cwd for f in facts) == sorted([str(here), str(elsewhere)])
        assert all(f.nthreads == 1 and f.threads >= 1 and f.ok for f in facts)
        assert not list(tmp_path.iterdir())  # the same-file-system token is gone again, no store was created

        missing = here / "nowhere" / "clips.csv"
        bad = StageSpec(modality="audio", clips=missing, store=tmp_path / "s.zarr", extractor="hf-speech")
        with pytest.raises(WorkerSetupError) as err:
            preflight(client, bad, table, [])
        msg = str(err.value)
        assert str(missing) in msg and "clip table" in msg
        for f in facts:  # every worker is named, with its host and folder
            assert f.address in msg and f.cwd in msg


def test_verify_done_names_the_clips_missing_from_the_store(tmp_path, prov):
    """Clips a worker reported done but the client's store lacks (a worker that wrote into its own
    copy of the path): an error naming them and the worker, not a silent exit 0."""
    from mer.pipeline.distributed import LostClipsError, verify_done

    fs = FeatureStore(tmp_path / "s.zarr").create("audio/x", level="utt", dim=4, provenance=prov())
    with fs.writer() as w:
        for n in ("a", "b"):
            w.add(n, np.ones(4, np.float32))
    verify_done(fs, {"tcp://10.0.0.1:1": ["a"], "tcp://10.0.0.2:2": ["b"]})
    lost = [f"c{i:02d}" for i in range(25)]
    with pytest.raises(LostClipsError) as err:
        verify_done(fs, {"tcp://10.0.0.1:1": ["a"], "tcp://10.0.0.2:2": ["b", *lost]})
    msg = str(err.value)
    assert "25 clips" in msg and "c00" in msg and "c19" in msg and "c20" not in msg  # at most 20 named
    assert "tcp://10.0.0.2:2" in msg and "tcp://10.0.0.1:1" not in msg and str(fs.path) in msg
    assert err.value.missing == lost


def test_worker_model_cache_is_shared_by_threads(tmp_path):
    """Threads of one worker asking for the same stage get one extractor, built once."""
    from mer.pipeline.distributed import worker_stage
    from mer.pipeline.stage import StageSpec

    feats = write_csv(tmp_path / "f.csv", [{"name": f"c{i}", "f1": str(i), "f2": "0.5"} for i in range(4)])
    table = write_csv(tmp_path / "clips.csv", [{"name": f"c{i}"} for i in range(4)])
    spec = StageSpec(modality="video", clips=table, store=tmp_path / "s.zarr", extractor="table",
                     config={"model": str(feats)})
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda _: worker_stage(spec), range(8)))
    assert len({id(ext) for ext, _ in got}) == 1 and len({id(t) for _, t in got}) == 1
    other = StageSpec(modality="video", clips=table, store=tmp_path / "s.zarr", extractor="table",
                      config={"model": str(feats), "columns": "f1"})
    assert worker_stage(other)[0].dim == 1 and worker_stage(spec)[0].dim == 2


def test_gpu_per_worker(tmp_path):
    """``--workers N --device cuda``: worker i sees only GPU i (round robin when fewer GPUs, within
    an inherited CUDA_VISIBLE_DEVICES); checked on a real local cluster, whose workers report their
    environment (no GPU is needed to see the mapping)."""
    from distributed import Client

    from mer.pipeline.distributed import gpu_envs, local_cluster

    assert gpu_envs("cpu", 2, ["0", "1"]) is None
    assert gpu_envs("cuda:1", 2, ["0", "1"]) is None  # an explicit device is the user's choice
    assert gpu_envs("cuda", 2, []) is None
    assert gpu_envs("cuda", 3, ["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": d} for d in ("0", "1", "0")]
    assert gpu_envs("cuda", 2, ["4", "6"]) == [{"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"}]
    cluster = local_cluster(2, "cuda", gpus=["3", "5"])
    try:
        with Client(cluster, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_S)
            seen = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
            threads = client.run(os.getenv, "OMP_NUM_THREADS")
    finally:
        cluster.close()
    assert sorted(seen.values()) == ["3", "5"]
    assert set(threads.values()) == {"1"}  # as the nanny of a plain LocalCluster sets it


def test_task_threads_from_each_workers_own_host():
    """Torch threads per task: the host's cores shared by every dask thread on that host."""
    from mer.pipeline.distributed import WorkerFacts, task_threads

    def facts(addr: str, host: str, cpus: int, nthreads: int) -> WorkerFacts:
        return WorkerFacts(address=addr, host=host, pid=1, cwd="/", nthreads=nthreads, cpus=cpus)

    got = task_threads([facts("a", "big", 16, 2), facts("b", "big", 16, 2), facts("c", "small", 2, 1),
                        facts("d", "tiny", 1, 4)])
    assert got == {"a": 4, "b": 4, "c": 2, "d": 1}
