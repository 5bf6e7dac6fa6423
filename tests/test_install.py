"""Both install modes map the top-level folders to mer.* and put nothing generic in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT

PACKAGES = ("pipeline", "extractors", "fusion", "store", "finetune")


def test_editable_install_maps_folders():
    import mer
    import mer.pipeline
    import mer.store

    assert Path(mer.store.__file__).resolve() == ROOT / "store" / "__init__.py"
    assert Path(mer.pipeline.__file__).resolve() == ROOT / "pipeline" / "__init__.py"
    assert mer.__version__ != "0.0.0+unknown"


def test_regular_wheel_install(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "__init__.py"):
        shutil.copy(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("mer-*.whl")
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"mer"}, top
    members = zipfile.ZipFile(wheel).namelist()
    assert "mer/store/README.md" in members and "mer/pipeline/cli.py" in members
    assert not any(m.startswith("mer/tests/") for m in members)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)
    code = "import mer.store, mer.pipeline.cli, mer.fusion, mer.extractors; print(mer.store.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert Path(out.stdout.strip()).resolve() == (site / "mer" / "store" / "__init__.py").resolve()
