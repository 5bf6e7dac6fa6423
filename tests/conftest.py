"""Shared fixtures: real stores in tmp dirs, the bundled sample, the repository root."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "ravdess"
MER2023 = ROOT / "examples" / "mer2023"
MER_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]
SHARED = ROOT.parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


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


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> Path:
    """The demo's three extraction stages on the bundled sample (~40 s, once per test session):
    ``clips.csv``, ``labels.csv`` and ``features.zarr`` with Whisper-base audio, OpenFace AUs and
    MiniLM text for the 360 clips of 12 actors."""
    from mer.pipeline.clips import labels_from_table, scan_dataset
    from mer.pipeline.demo import demo_stages
    from mer.pipeline.stage import run_stage
    from mer.store.tables import write_clip_table

    root = tmp_path_factory.mktemp("demo-store")
    table = scan_dataset(SAMPLE)
    clips = write_clip_table(table, root / "clips.csv")
    labels_from_table(table, "emotion", root / "labels.csv")
    for spec in demo_stages(SAMPLE, clips, root / "features.zarr", whisper_seconds=0.0):
        assert not run_stage(spec, progress=False).failed
    return root


@pytest.fixture(scope="session")
def mer_text(tmp_path_factory) -> Path:
    """Bundled MER2023 subtitles: MiniLM features (``text/minilm``, English) of train, test1 and the
    test2+test3 pool in ``features.zarr``, ``pool.csv``, and a 5-fold ``single`` MLP run on
    train-labels in ``run/`` (about a minute on two idle cores)."""
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
    train_run(root / "features.zarr", ["text/minilm"], MER2023 / "train-labels.csv", root / "run", model="single",
              train=TrainConfig(epochs=25, patience=8), folds=5, classes=MER_CLASSES, progress=False)
    return root
