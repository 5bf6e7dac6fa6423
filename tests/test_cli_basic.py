"""The `mer` console script, run for real in a subprocess (exit codes, stdout/stderr, files written)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import CLI_ENV, HANG_S
from mer.pipeline.face_detectors import mtcnn_available
from mer.store import FeatureStore
from mer.store.tables import RAVDESS_CLASSES, read_clip_table, read_labels

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO / "examples" / "ravdess"
AU_CSV = RAVDESS / "openface_au.csv"
MER = Path(sys.executable).parent / "mer"
ENV = CLI_ENV


def mer(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (``python -m mer.pipeline.cli`` where it is not installed)."""
    prefix = [str(MER)] if MER.is_file() else [sys.executable, "-m", "mer.pipeline.cli"]
    return subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=HANG_S)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def info_row(stdout: str, key: str) -> list[str]:
    """Cells of the `mer store info` table row of set ``key``."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines() if f"│ {key} " in line]
    assert len(rows) == 1, stdout
    return rows[0]


@pytest.fixture(scope="module")
def au_store(tmp_path_factory) -> Path:
    """The bundled OpenFace AUs imported once, as video/au."""
    store = tmp_path_factory.mktemp("store") / "s.zarr"
    res = mer("store", "import", "csv", AU_CSV, "--store", store, "--set", "video/au")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "video/au: 360 written, 0 already done, 0 failed"
    return store


# ---- help and placeholders ------------------------------------------------------------------

def test_help_lists_commands() -> None:
    res = mer("--help")
    assert res.returncode == 0, res.stderr
    commands = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    for cmd in ("extract", "fuse", "store", "clips", "demo"):
        assert cmd in commands, res.stdout


def test_no_args_shows_help() -> None:
    res = mer()
    assert res.returncode in (0, 2)
    assert "Usage: mer" in res.stdout + res.stderr


# ---- clips ----------------------------------------------------------------------------------

def test_clips_scan_and_check(tmp_path: Path) -> None:
    res = mer("clips", "scan", RAVDESS, "-o", tmp_path / "clips.csv", "--labels-out", tmp_path / "labels.csv")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith(f"wrote 360 clips to {tmp_path / 'clips.csv'}")
    assert f"wrote labels to {tmp_path / 'labels.csv'}" in res.stdout

    table = read_clip_table(tmp_path / "clips.csv")
    assert len(table) == 360
    assert "speaker" in table.columns
    assert table.media_path("01-01-01-01-01-01", "audio").samefile(RAVDESS / "audio" / "01-01-01-01-01-01.flac")
    with open(tmp_path / "clips.csv", newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == 361

    labels = read_labels(tmp_path / "labels.csv", classes=RAVDESS_CLASSES)
    assert len(labels) == 360
    counts = Counter(labels.values())
    assert counts["neutral"] == 24 and all(counts[c] == 48 for c in RAVDESS_CLASSES if c != "neutral")

    res = mer("clips", "check", tmp_path / "clips.csv")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "360 clips, 0 with problems"
    assert res.stderr == ""


def test_clips_check_reports_missing_audio(tmp_path: Path) -> None:
    data = tmp_path / "ravdess"
    shutil.copytree(RAVDESS, data)
    res = mer("clips", "scan", data, "-o", tmp_path / "out" / "clips.csv")
    assert res.returncode == 0, res.stderr
    victim = "01-05-02-01-01-01"
    (data / "audio" / f"{victim}.flac").unlink()
    res = mer("clips", "check", tmp_path / "out" / "clips.csv")
    assert res.returncode == 1
    assert res.stdout.strip() == "360 clips, 1 with problems"
    assert f"clip {victim}: audio file not found" in res.stderr
    assert res.stderr.count("clip ") == 1


def test_clips_scan_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = mer("clips", "scan", tmp_path / "empty", "-o", tmp_path / "clips.csv")
    assert_one_line_error(res, "no clips.csv, transcription.csv or media files found")
    assert not (tmp_path / "clips.csv").exists()


def test_clips_check_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "clips.csv").write_text("name,audio\na,a.wav\nb,b.wav\na,c.wav\n", encoding="utf-8")
    assert_one_line_error(mer("clips", "check", tmp_path / "clips.csv"), "duplicate clip names: a")


# ---- store ----------------------------------------------------------------------------------

def test_store_info_table(au_store: Path) -> None:
    res = mer("store", "info", au_store)
    assert res.returncode == 0, res.stderr
    cells = info_row(res.stdout, "video/au")
    assert cells[:5] == ["video/au", "utt", "360", "35", "float32"]
    assert cells[6] == "import-csv / openface_au.csv"
    assert cells[7:] == ["0", "0"]


def test_store_info_json(au_store: Path) -> None:
    res = mer("store", "info", "--json", au_store)
    assert res.returncode == 0, res.stderr
    sets = json.loads(res.stdout)
    assert len(sets) == 1
    s = sets[0]
    assert s["set"] == "video/au"
    assert s["clips"] == 360
    assert s["dim"] == 35
    assert s["level"] == "utt"
    assert s["dtype"] == "float32"
    assert s["frames"] is None
    assert s["failures"] == 0 and s["failed"] == {}
    assert s["extractor"] == "import-csv"
    assert Path(s["model"]) == AU_CSV.resolve()
    assert s["bytes"] > 360 * 35  # something real was written


def test_store_values_match_csv(au_store: Path) -> None:
    with open(AU_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    fs = FeatureStore(au_store, mode="r")["video/au"]
    assert fs.names() == [r[0] for r in rows]
    values = fs.read([rows[0][0], rows[-1][0]])
    np.testing.assert_allclose(values[0], np.array(rows[0][1:], dtype=np.float32))
    np.testing.assert_allclose(values[1], np.array(rows[-1][1:], dtype=np.float32))


def test_store_import_twice_skips_done(au_store: Path) -> None:
    res = mer("store", "import", "csv", AU_CSV, "--store", au_store, "--set", "video/au")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "video/au: 0 written, 360 already done, 0 failed"
    assert json.loads(mer("store", "info", "--json", au_store).stdout)[0]["clips"] == 360


def test_store_check_clean(au_store: Path) -> None:
    res = mer("store", "check", au_store)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0 problems found, 0 fixed, 0 remaining"


def test_store_import_non_numeric_row(tmp_path: Path) -> None:
    with open(AU_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    bad = rows[5][0]
    col = rows[0][3]
    rows[5][3] = "n/a"
    with open(tmp_path / "bad.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    store = tmp_path / "s.zarr"
    res = mer("store", "import", "csv", tmp_path / "bad.csv", "--store", store, "--set", "video/au")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "video/au: 359 written, 0 already done, 1 failed" in res.stdout
    assert f"clip {bad}: bad.csv:6: non-numeric value 'n/a' in column '{col}'" in res.stderr

    info = json.loads(mer("store", "info", "--json", store).stdout)[0]
    assert info["clips"] == 359
    assert info["failures"] == 1
    assert list(info["failed"]) == [bad]
    assert bad not in FeatureStore(store, mode="r")["video/au"].names()


def test_store_import_selected_clips(tmp_path: Path) -> None:
    names = ["01-05-02-01-01-01", "01-01-01-01-01-01", "01-08-02-02-01-12"]
    (tmp_path / "only.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    store = tmp_path / "s.zarr"
    res = mer("store", "import", "csv", AU_CSV, "--store", store, "--set", "video/au",
              "--only", tmp_path / "only.txt", "--columns", "AU01_r,AU12_r")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "video/au: 3 written, 0 already done, 0 failed"
    info = json.loads(mer("store", "info", "--json", store).stdout)[0]
    assert (info["clips"], info["dim"]) == (3, 2)
    assert sorted(FeatureStore(store, mode="r")["video/au"].names()) == sorted(names)


@pytest.mark.parametrize("case", ["clips-check", "scan-folder", "import-csv", "import-only-txt",
                                  "import-only-csv", "store-info", "store-check"])
def test_missing_files_give_one_line_error(case: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    args, fragment = {
        "clips-check": (("clips", "check", missing / "clips.csv"), "clips.csv: file not found"),
        "scan-folder": (("clips", "scan", missing, "-o", tmp_path / "c.csv"), "not a directory"),
        "import-csv": (("store", "import", "csv", missing / "au.csv", "--store", tmp_path / "s.zarr",
                        "--set", "video/au"), "au.csv"),
        "import-only-txt": (("store", "import", "csv", AU_CSV, "--store", tmp_path / "s.zarr", "--set", "video/au",
                             "--only", missing / "names.txt"), "names.txt"),
        "import-only-csv": (("store", "import", "csv", AU_CSV, "--store", tmp_path / "s.zarr", "--set", "video/au",
                             "--only", missing / "labels.csv"), "labels.csv"),
        "store-info": (("store", "info", missing / "s.zarr"), "does not exist"),
        "store-check": (("store", "check", missing / "s.zarr"), "does not exist"),
    }[case]
    assert_one_line_error(mer(*args), fragment)


def test_malformed_labels_file_for_only_gives_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("clip,discrete\na,happy\n", encoding="utf-8")
    res = mer("store", "import", "csv", AU_CSV, "--store", tmp_path / "s.zarr", "--set", "video/au",
              "--only", tmp_path / "labels.csv")
    assert_one_line_error(res, "no 'name' column")


# ---- demo -----------------------------------------------------------------------------------

def test_demo(demo_run) -> None:
    out, res = demo_run  # `mer demo --out DIR`, run once per session (the fusion tests read its store)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "360 clips, 8 emotions, 12 speakers" in res.stdout
    assert res.stdout.count("│   360 │  360 │       0 │      0 │") == 3  # three stages, all clips done
    metrics = json.loads((out / "runs" / "agt" / "metrics.json").read_text())
    assert metrics["model"] == "agt" and len(metrics["folds"]) == 3 and metrics["oof"]["n"] == 270
    assert metrics["summary"]["waf"]["mean"] > 0.5  # chance is 0.125
    assert f"{metrics['summary']['waf']['mean']:.3f} ±" in res.stdout
    st = json.loads((out / "runs" / "selftrain" / "selftrain.json").read_text())
    assert st["pool"] == 90 and [r["round"] for r in st["rounds"]] == [0, 1]
    assert st["rounds"][1]["pseudo_accuracy"] > 0.5  # scored against the hidden labels
    for method in ("none", "em"):
        assert len((out / f"pool-predictions-{method}.csv").read_text().splitlines()) == 91
    assert "pool, prior correction em: WAF" in res.stdout
    assert (out / "clips.csv").is_file() and (out / "labels.csv").is_file() and (out / "features.zarr").is_dir()

    table = read_clip_table(out / "clips.csv")
    assert len(table) == 360
    assert table.media_path(table.names[0], "audio").is_file()
    labels = read_labels(out / "labels.csv", classes=RAVDESS_CLASSES)
    assert len(labels) == 360 and len(set(labels.values())) == 8

    # step 5: the real video stage with face crops on the bundled clip, random CLIP weights (said plainly)
    detector = "mtcnn" if mtcnn_available() else "haar"
    assert f"face detector: {detector} (--face-detector auto)" in res.stdout
    found = re.search(r"fer_test: faces found in (\d+) of (\d+) frames", res.stdout)
    assert found and 0 < int(found[1]) <= int(found[2]) == 10, res.stdout  # 4.6 s at 2 frames/s
    flat = " ".join(res.stdout.split())
    assert "The CLIP weights of video/clip-random-faces are random" in flat
    assert "its vectors carry no emotion and the fusion below does not use them" in flat

    store = FeatureStore(out / "features.zarr", mode="r")
    assert store.sets() == ["audio/whisper-base", "text/minilm", "video/clip-random-faces", "video/openface-au"]
    faces = store["video/clip-random-faces"]
    assert faces.names() == ["fer_test"] and faces.level == "utt" and faces.dim == 64
    assert faces.read_extra("faces", ["fer_test"])[0] == int(found[1])
    assert faces.provenance.decode["video"]["faces"] is True
    assert faces.provenance.decode["video"]["face_detector"] == detector
    fs = store["video/openface-au"]
    assert fs.level == "utt" and fs.dim == 35
    assert len(fs.names()) == 360
    assert sorted(fs.names()) == sorted(table.names)
    assert fs.read().shape == (360, 35)
    assert store["audio/whisper-base"].read().shape == (360, 512)
    assert store["text/minilm"].read().shape == (360, 384)
    assert store["audio/whisper-base"].provenance.weights_hash.startswith("sha256:")

    again = mer("demo", "--out", out)  # rerunning resumes instead of redoing
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("│   360 │    0 │     360 │      0 │") == 3
    assert again.stdout.count("│     1 │    0 │       1 │      0 │") == 1  # the video step resumes too


def test_demo_without_data(tmp_path: Path) -> None:
    res = mer("demo", "--out", tmp_path / "demo", "--data", tmp_path / "nodata")
    assert res.returncode == 1
    assert "demo data not found" in res.stdout
