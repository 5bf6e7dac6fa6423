"""scan_dataset, labels_from_table and check_media (mer.pipeline.clips) on real folders."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from mer.pipeline.clips import check_media, labels_from_table, scan_dataset
from mer.store.tables import RAVDESS_CLASSES, ClipTable, TableError, read_clip_table, read_labels, write_clip_table

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO / "examples" / "ravdess"
SHARED = Path("/work/shared/data")
SHARED_TRANSCRIPTION = SHARED / "mer2023" / "transcription.csv"


def touch(path: Path, data: bytes = b"\0" * 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- (a) RAVDESS style ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ravdess_table() -> ClipTable:
    return scan_dataset(RAVDESS)


def test_ravdess_scan(ravdess_table: ClipTable) -> None:
    t = ravdess_table
    assert len(t) == 360
    assert t.names[0] == "01-01-01-01-01-01"
    assert len(set(t.names)) == 360
    assert t.columns == ["name", "actor", "gender", "emotion", "intensity", "statement", "repetition",
                         "text", "audio", "speaker"]
    assert t.column("speaker") == t.column("actor")
    assert len(set(t.column("speaker").values())) == 12
    assert Counter(t.column("speaker").values()) == Counter({s: 30 for s in t.column("speaker").values()})
    assert t.column("text")["01-01-01-01-01-01"] == "Kids are talking by the door"


def test_ravdess_audio_paths_are_absolute_and_exist(ravdess_table: ClipTable) -> None:
    for name in ravdess_table.names:
        p = ravdess_table.media_path(name, "audio")
        assert p.is_absolute()
        assert p == (RAVDESS / "audio" / f"{name}.flac").resolve()
        assert p.is_file()
    assert check_media(ravdess_table) == {}


def test_ravdess_labels_from_emotion(ravdess_table: ClipTable, tmp_path: Path) -> None:
    out = labels_from_table(ravdess_table, "emotion", tmp_path / "labels.csv")
    assert out == tmp_path / "labels.csv"
    labels = read_labels(out, classes=RAVDESS_CLASSES)
    assert len(labels) == 360
    counts = Counter(labels.values())
    assert len(counts) == 8
    assert set(counts) == set(RAVDESS_CLASSES)
    assert counts["neutral"] == 24
    assert all(counts[c] == 48 for c in RAVDESS_CLASSES if c != "neutral")
    assert labels["01-01-01-01-01-01"] == "neutral"
    assert list(labels) == ravdess_table.names


def test_ravdess_scan_written_elsewhere_still_resolves(ravdess_table: ClipTable, tmp_path: Path) -> None:
    out = write_clip_table(ravdess_table, tmp_path / "work" / "clips.csv")
    back = read_clip_table(out)
    assert len(back) == 360
    assert not os.path.isabs(back.column("audio")["01-01-01-01-01-01"])
    assert check_media(back) == {}
    assert back.media_path("01-01-01-01-01-01", "audio").samefile(RAVDESS / "audio" / "01-01-01-01-01-01.flac")
    assert back.column("speaker") == back.column("actor")


def test_ravdess_keeps_existing_speaker_column(tmp_path: Path) -> None:
    touch(tmp_path / "a.wav")
    (tmp_path / "clips.csv").write_text("name,actor,speaker,audio\na,7,spk-x,a.wav\n", encoding="utf-8")
    t = scan_dataset(tmp_path)
    assert t.columns == ["name", "actor", "speaker", "audio"]
    assert t.column("speaker") == {"a": "spk-x"}


def test_ravdess_duplicate_names_in_clips_csv(tmp_path: Path) -> None:
    (tmp_path / "clips.csv").write_text("name,audio\na,a.wav\na,b.wav\n", encoding="utf-8")
    with pytest.raises(TableError, match="duplicate clip names: a"):
        scan_dataset(tmp_path)


def test_labels_from_table_empty_value(tmp_path: Path) -> None:
    t = ClipTable(None, ["name", "emotion"], [{"name": "a", "emotion": "happy"}, {"name": "b", "emotion": ""},
                                              {"name": "c", "emotion": ""}])
    with pytest.raises(TableError, match=r"2 clips have no value in column 'emotion': b, c"):
        labels_from_table(t, "emotion", tmp_path / "labels.csv")
    assert not (tmp_path / "labels.csv").exists()
    with pytest.raises(TableError, match="no column 'valence'"):
        labels_from_table(t, "valence", tmp_path / "labels.csv")


@pytest.mark.skipif(not (SHARED / "ravdess" / "clips.csv").is_file(), reason="/work/shared/data/ravdess not present")
def test_shared_ravdess_scan(tmp_path: Path) -> None:
    t = scan_dataset(SHARED / "ravdess")
    assert len(t) == 1200
    assert len(set(t.column("speaker").values())) == 20
    assert check_media(t) == {}
    labels = read_labels(labels_from_table(t, "emotion", tmp_path / "labels.csv"), classes=RAVDESS_CLASSES)
    counts = Counter(labels.values())
    assert counts["neutral"] == 80 and all(counts[c] == 160 for c in RAVDESS_CLASSES if c != "neutral")


# ---- (b) MER style --------------------------------------------------------------------------

def mer_rows() -> list[tuple[str, str, str]]:
    """Three (name, chinese, english) rows: real ones from MER2023 when available."""
    if SHARED_TRANSCRIPTION.is_file():
        with open(SHARED_TRANSCRIPTION, newline="", encoding="utf-8") as f:
            rows = [(r["name"], r["chinese"], r["english"]) for r in csv.DictReader(f) if r["english"]]
        return rows[:3]
    return [("sample_00000001", "你好，世界。", "Hello, world."),
            ("sample_00000002", "那当然啦。", "Of course."),
            ("sample_00000003", "哟！都吃完了。", 'He said "yes", then left.')]


@pytest.fixture
def mer_folder(tmp_path: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    root = tmp_path / "mer"
    rows = mer_rows()
    root.mkdir()
    with open(root / "transcription.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "chinese", "english"])
        w.writerows(rows)
    touch(root / "video" / f"{rows[0][0]}.mp4")
    touch(root / "video" / f"{rows[1][0]}.mp4")
    touch(root / "video" / "sample_99999999.mp4")  # not in transcription.csv
    touch(root / "video" / "notes.txt")  # not media: ignored
    return root, rows


def test_mer_scan(mer_folder) -> None:
    root, rows = mer_folder
    (n0, zh0, en0), (n1, _, _), (n2, zh2, en2) = rows
    t = scan_dataset(root)
    assert len(t) == 4
    assert t.columns == ["name", "video", "audio", "chinese", "english"]
    assert t.names == [n0, n1, n2, "sample_99999999"]
    video = t.column("video")
    assert Path(video[n0]) == (root / "video" / f"{n0}.mp4").resolve()
    assert Path(video[n1]) == (root / "video" / f"{n1}.mp4").resolve()
    assert video[n2] == ""
    assert Path(video["sample_99999999"]).name == "sample_99999999.mp4"
    assert set(t.column("audio").values()) == {""}
    assert t.column("chinese")[n0] == zh0 and t.column("english")[n0] == en0
    assert t.column("chinese")[n2] == zh2 and t.column("english")[n2] == en2
    assert t.column("chinese")["sample_99999999"] == ""
    assert t.column("english")["sample_99999999"] == ""
    assert check_media(t) == {}


def test_mer_scan_roundtrip_through_csv(mer_folder, tmp_path: Path) -> None:
    root, rows = mer_folder
    out = write_clip_table(scan_dataset(root), root / "clips.csv")
    back = read_clip_table(out)
    assert len(back) == 4
    assert back.column("video")[rows[0][0]] == os.path.join("video", f"{rows[0][0]}.mp4")
    assert back.column("video")[rows[2][0]] == ""
    assert back.column("english")[rows[0][0]] == rows[0][2]
    assert back.column("chinese")[rows[1][0]] == rows[1][1]
    assert check_media(back) == {}
    # a deleted video is reported by name
    (root / "video" / f"{rows[1][0]}.mp4").unlink()
    problems = check_media(back)
    assert list(problems) == [rows[1][0]]
    assert problems[rows[1][0]].startswith("video file not found:")


def test_mer_scan_with_audio_next_to_video(mer_folder) -> None:
    root, rows = mer_folder
    touch(root / "audio" / f"{rows[2][0]}.WAV")
    t = scan_dataset(root)
    assert len(t) == 4
    assert Path(t.column("audio")[rows[2][0]]).name == f"{rows[2][0]}.WAV"
    assert t.column("video")[rows[2][0]] == ""


# ---- (c) plain media folder -----------------------------------------------------------------

def test_plain_folder(tmp_path: Path) -> None:
    for rel in ("b.wav", "a.wav", "a.mp4", "sub/c.MP4", "sub/deeper/d.flac", "readme.txt", "e.json"):
        touch(tmp_path / rel)
    t = scan_dataset(tmp_path)
    assert t.path is None
    assert t.names == ["a", "b", "c", "d"]
    assert t.columns == ["name", "video", "audio"]
    assert t.rows == [
        {"name": "a", "video": str((tmp_path / "a.mp4").resolve()), "audio": str((tmp_path / "a.wav").resolve())},
        {"name": "b", "video": "", "audio": str((tmp_path / "b.wav").resolve())},
        {"name": "c", "video": str((tmp_path / "sub" / "c.MP4").resolve()), "audio": ""},
        {"name": "d", "video": "", "audio": str((tmp_path / "sub" / "deeper" / "d.flac").resolve())},
    ]
    assert check_media(t) == {}


def test_plain_audio_only_folder_has_no_video_column(tmp_path: Path) -> None:
    for n in ("x", "y", "z"):
        touch(tmp_path / f"{n}.wav")
    t = scan_dataset(tmp_path)
    assert t.columns == ["name", "audio"]
    assert len(t) == 3
    out = write_clip_table(t, tmp_path / "clips.csv")
    assert read_clip_table(out).column("audio") == {"x": "x.wav", "y": "y.wav", "z": "z.wav"}


# ---- (d) errors -----------------------------------------------------------------------------

def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no clips.csv, transcription.csv or media files found") as err:
        scan_dataset(tmp_path)
    assert str(tmp_path.resolve()) in str(err.value)


def test_folder_without_media(tmp_path: Path) -> None:
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "sub" / "features.npy")
    with pytest.raises(TableError, match="no clips.csv, transcription.csv or media files found"):
        scan_dataset(tmp_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="not a directory"):
        scan_dataset(tmp_path / "missing")
    with pytest.raises(TableError, match="not a directory"):
        scan_dataset(touch(tmp_path / "file.wav"))


def test_same_stem_same_kind_in_two_folders(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "clip7.wav")
    touch(tmp_path / "b" / "clip7.wav")
    touch(tmp_path / "other.wav")
    with pytest.raises(TableError, match=r"clip 'clip7': two audio files") as err:
        scan_dataset(tmp_path)
    assert str((tmp_path / "a" / "clip7.wav").resolve()) in str(err.value)
    assert str((tmp_path / "b" / "clip7.wav").resolve()) in str(err.value)


def test_same_stem_two_audio_formats(tmp_path: Path) -> None:
    touch(tmp_path / "clip1.wav")
    touch(tmp_path / "clip1.flac")
    with pytest.raises(TableError, match=r"clip 'clip1': two audio files"):
        scan_dataset(tmp_path)


def test_same_stem_two_videos_in_mer_folder(mer_folder) -> None:
    root, rows = mer_folder
    touch(root / "other" / f"{rows[0][0]}.avi")
    with pytest.raises(TableError, match=rf"clip '{rows[0][0]}': two video files"):
        scan_dataset(root)


def test_check_media_after_deleting_a_file(tmp_path: Path) -> None:
    data = tmp_path / "ravdess"
    shutil.copytree(RAVDESS, data)
    t = read_clip_table(write_clip_table(scan_dataset(data), tmp_path / "clips.csv"))
    victim = "01-05-02-01-01-01"
    assert victim in t.names
    (data / "audio" / f"{victim}.flac").unlink()
    problems = check_media(t)
    assert list(problems) == [victim]
    assert problems[victim].startswith("audio file not found:")
    assert problems[victim].endswith(f"{victim}.flac")
