"""Shared fixtures: real stores in tmp dirs, the bundled sample, the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "ravdess"
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


def mer_cli() -> list[str]:
    """Command prefix that runs the installed `mer` console script."""
    script = Path(sys.executable).parent / "mer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mer.pipeline.cli"]
