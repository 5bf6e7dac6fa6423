"""Shared fixtures: real stores in tmp dirs, the bundled sample, the repository root."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Under pytest-xdist (`make test`: two worker processes on two cores) each worker, and every
# subprocess it starts, gets one math thread: two workers with two threads each would put four
# busy threads on two cores, where small torch ops wait on descheduled threads. Set before numpy
# and torch load their thread pools; an explicit setting (``make portable``) is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "ravdess"
MER2023 = ROOT / "examples" / "mer2023"
MER_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
SHARED = ROOT.parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
# Only a guard against a hang: no test is decided by wall-clock time (a loaded or slow machine is
# slow, not wrong), so every subprocess and wait in the suite gets this generous bound.
HANG_S = 900


# ---- scheduling under pytest-xdist (`make test` runs ``-n 2 --dist loadgroup``) ------------------
# Every module is one unit of work (its module-scoped fixtures, tiny models and tables, are built
# once), except the modules sharing an expensive session fixture, which form one unit each so that
# fixture is built once: the demo run (``demo_run``: the CLI tests and the fusion tests on its store)
# and the MER2023 text features and run (``mer_text``: label shift and self-training).
SHARED_FIXTURE_GROUPS = {
    "test_cli_basic": "demo", "test_fusion_train": "demo",
    "test_label_shift": "mer_text", "test_selftrain": "mer_text",
}
# The longest units start first (roughly 2 min of work each on two cores), so neither worker is
# left with a long unit at the end while the other idles; the rest follow in collection order.
FIRST_GROUPS = ["demo", "mer_text", "test_extract_cli", "test_faults_provenance", "test_finetune",
                "test_faults_interrupt", "test_faults_nonfinite"]


def xdist_group(nodeid: str) -> str:
    """The unit of work a test belongs to: its module's name, or its shared-fixture group."""
    module = Path(nodeid.split("::", 1)[0]).stem
    return SHARED_FIXTURE_GROUPS.get(module, module)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the longest groups first (stable: collection order otherwise)."""
    rank = {g: i for i, g in enumerate(FIRST_GROUPS)}
    items.sort(key=lambda it: rank.get(xdist_group(it.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown (and unused) without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """With ``--dist loadgroup``: whole groups (:func:`xdist_group`) to one worker each, in
    collection order. xdist's own loadgroup reads ``xdist_group`` marks from a suffix it appends to
    node ids, which pytest 9.2 no longer lets it set (every test became its own unit), so the
    grouping is done here from the node id's module instead."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return ModuleGroupScheduling(config, log)


# Unit roundoff of the half types. Kernels differ by CPU (AMX / AVX512-BF16 accumulate
# differently from the emulated path, and threads split sums differently), so the check is not a
# max-abs constant tuned on one machine: it asks what matters downstream.
EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


def assert_reduced_precision_close(ref: np.ndarray, got: np.ndarray, dtype: str, what: object) -> None:
    """Each vector points the same way (cosine >= 0.99: a classifier on top sees the same input),
    and the typical element error is a small multiple of the dtype's roundoff at the output's scale
    (median |error| <= 16 eps x RMS: bf16 allows 6 % of the RMS; 0.2-0.6 % seen on an AVX2 CPU with
    1 or 2 threads). A few outlier elements, where a kernel's accumulation order matters most, do
    not decide the test (one AMX machine showed a max |error| of 0.38 where AVX2 shows 0.007)."""
    r, g = ref.reshape(-1, ref.shape[-1]).astype(np.float64), got.reshape(-1, got.shape[-1]).astype(np.float64)
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-12)
    rms = float(np.sqrt((r**2).mean()))
    med = float(np.median(np.abs(g - r)))
    stats = f"{what}: min cosine {cos.min():.5f}, median |err| {med:.2e}, RMS {rms:.3f}, max |err| {np.abs(g - r).max():.3f}"
    assert cos.min() >= 0.99, stats
    assert med <= 16 * EPS[dtype] * rms, stats


@pytest.fixture
def store(tmp_path):
    """An empty feature store on disk."""
    from mer.store import FeatureStore

    return FeatureStore(tmp_path / "features.zarr")


@pytest.fixture
def prov():
    """A provenance factory: ``prov(**overrides)``."""
    from mer.store import Provenance

    def make(**kw):
        kw.setdefault("extractor", "synthetic")
        kw.setdefault("config", {"dim": 16})
        return Provenance(**kw)

    return make


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """A CSV file (clip table, labels...) with the columns of the first row."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def mer_cli() -> list[str]:
    """Command prefix that runs the installed `mer` console script."""
    script = Path(sys.executable).parent / "mer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mer.pipeline.cli"]


# Fusion models are small: their matrices gain nothing from a second torch thread, and with two
# threads on cores that another job shares, every small op waits for a descheduled thread (the
# self-training test ran 7x slower under load). Fusion training in tests runs on one thread.
def one_thread_env(**extra: str) -> dict[str, str]:
    """This process's environment with one math thread for a subprocess, plus ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread inside the block (see :func:`one_thread_env`), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# rich tables at a fixed width and without colour, so tests can match their rows
CLI_ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``mer demo --out DIR`` through the console script, once per test session (~1-2 min on two
    cores): the folder and the finished process. Its ``clips.csv``, ``labels.csv`` and
    ``features.zarr`` (Whisper-base audio, OpenFace AUs and MiniLM text for the 360 clips of 12
    actors) are also what :func:`demo_store` gives the fusion tests, so the three extraction stages
    run once for both."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    res = subprocess.run([*mer_cli(), "demo", "--out", str(out)], capture_output=True, text=True, env=CLI_ENV,
                         timeout=HANG_S)
    return out, res


@pytest.fixture(scope="session")
def demo_store(demo_run) -> Path:
    """The demo's folder (see :func:`demo_run`), once its run succeeded."""
    out, res = demo_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def mer_text(tmp_path_factory) -> Path:
    """Bundled MER2023 subtitles: MiniLM features (``text/minilm``, English) of train, test1 and the
    test2+test3 pool in ``features.zarr``, ``pool.csv``, and a 5-fold ``single`` MLP run (hidden 64)
    on train-labels in ``run/`` (about a minute on two idle cores)."""
    from mer.fusion.config import TrainConfig
    from mer.fusion.run import train_run
    from mer.pipeline.inputs import DecodeSettings
    from mer.pipeline.stage import StageSpec, run_stage
    from mer.store.tables import read_names

    root = tmp_path_factory.mktemp("mer2023")
    pool = read_names(MER2023 / "test2-names.csv") + read_names(MER2023 / "test3-names.csv")
    (root / "pool.csv").write_text("name\n" + "\n".join(pool) + "\n")
    names = read_names(MER2023 / "train-labels.csv") + read_names(MER2023 / "test1-labels.csv") + pool
    spec = StageSpec(modality="text", clips=MER2023 / "transcription.csv", store=root / "features.zarr",
                     extractor="sentence", key="text/minilm", config={"empty": "encode"},
                     decode=DecodeSettings(text_column="english"))
    assert not run_stage(spec, only=names, progress=False).failed
    with one_torch_thread():
        train_run(root / "features.zarr", ["text/minilm"], MER2023 / "train-labels.csv", root / "run", model="single",
                  model_config={"hidden": 64}, train=TrainConfig(epochs=25, patience=8), folds=5,
                  classes=MER_CLASSES, progress=False)
    return root
