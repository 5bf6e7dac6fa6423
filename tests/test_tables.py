"""Clip tables and label files (mer.store.tables), on real CSV files written to tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mer.store.tables import (
    MER_CLASSES,
    RAVDESS_CLASSES,
    ClipTable,
    TableError,
    read_clip_table,
    read_labels,
    read_names,
    write_clip_table,
    write_labels,
)

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO / "examples" / "ravdess"
SHARED_MER = Path("/work/shared/data/mer2023")
needs_shared_mer = pytest.mark.skipif(not SHARED_MER.is_dir(), reason="/work/shared/data/mer2023 not present")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A small dataset folder: clips.csv with relative media paths and three real (empty) media files."""
    root = tmp_path / "data"
    for rel in ("audio/a.wav", "audio/b.wav", "video/a.mp4"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\0" * 16)
    write(root / "clips.csv",
          "name,video,audio,text,speaker\n"
          "a,video/a.mp4,audio/a.wav,\"Hello, world\",1\n"
          "b,,audio/b.wav,你好,2\n"
          "c,,,,3\n")
    return root


# ---- read_clip_table ------------------------------------------------------------------------

def test_read_resolves_media_against_csv_folder(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path.parent)  # the CWD must not matter
    t = read_clip_table(dataset / "clips.csv")
    assert t.names == ["a", "b", "c"]
    assert len(t) == 3
    assert t.columns == ["name", "video", "audio", "text", "speaker"]
    assert t.media_path("a", "audio") == dataset / "audio" / "a.wav"
    assert t.media_path("a", "video") == dataset / "video" / "a.mp4"
    assert t.media_path("b", "audio").is_file()
    assert t.media_path("b", "video") is None
    assert t.media_path("c", "audio") is None
    assert t.column("text") == {"a": "Hello, world", "b": "你好", "c": ""}
    assert t.column("speaker") == {"a": "1", "b": "2", "c": "3"}


def test_read_keeps_absolute_media_paths(tmp_path: Path) -> None:
    media = tmp_path / "elsewhere" / "x.wav"
    media.parent.mkdir()
    media.write_bytes(b"RIFF")
    t = read_clip_table(write(tmp_path / "t" / "clips.csv", f"name,audio\nx,{media}\n"))
    assert t.media_path("x", "audio") == media


def test_read_strips_bom_and_whitespace(tmp_path: Path) -> None:
    p = tmp_path / "clips.csv"
    p.write_bytes("\ufeffname , audio\n a , x.wav \n".encode("utf-8"))
    t = read_clip_table(p)
    assert t.columns == ["name", "audio"]
    assert t.names == ["a"]
    assert t.column("audio") == {"a": "x.wav"}


def test_read_short_rows_give_empty_cells(tmp_path: Path) -> None:
    t = read_clip_table(write(tmp_path / "clips.csv", "name,audio,text\na,a.wav\nb\n"))
    assert t.rows == [{"name": "a", "audio": "a.wav", "text": ""}, {"name": "b", "audio": "", "text": ""}]


def test_unknown_column_is_an_error(dataset: Path) -> None:
    t = read_clip_table(dataset / "clips.csv")
    with pytest.raises(TableError, match=r"no column 'emotion'.*name, video, audio, text, speaker"):
        t.column("emotion")


def test_write_into_other_folder_rewrites_media_paths(dataset: Path, tmp_path: Path) -> None:
    t = read_clip_table(dataset / "clips.csv")
    out = write_clip_table(t, tmp_path / "elsewhere" / "deeper" / "clips.csv")
    assert out == tmp_path / "elsewhere" / "deeper" / "clips.csv"
    back = read_clip_table(out)
    assert back.names == ["a", "b", "c"]
    assert back.columns == t.columns
    # the cells are now relative to the new folder ...
    assert back.column("audio")["a"] == os.path.join("..", "..", "data", "audio", "a.wav")
    assert back.column("video")["a"] == os.path.join("..", "..", "data", "video", "a.mp4")
    # ... and still point at the same files
    for name, col in (("a", "audio"), ("a", "video"), ("b", "audio")):
        assert back.media_path(name, col).resolve() == t.media_path(name, col).resolve()
        assert back.media_path(name, col).samefile(t.media_path(name, col))
    # empty media cells stay empty, other columns are copied verbatim
    assert back.column("video")["b"] == ""
    assert back.column("audio")["c"] == ""
    assert back.column("text") == {"a": "Hello, world", "b": "你好", "c": ""}
    assert back.column("speaker") == {"a": "1", "b": "2", "c": "3"}


def test_write_in_place_keeps_relative_paths(dataset: Path) -> None:
    t = read_clip_table(dataset / "clips.csv")
    write_clip_table(t, dataset / "copy.csv")
    back = read_clip_table(dataset / "copy.csv")
    assert back.column("audio") == {"a": os.path.join("audio", "a.wav"), "b": os.path.join("audio", "b.wav"), "c": ""}


def test_write_relative_output_path(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    t = read_clip_table(dataset / "clips.csv")
    write_clip_table(t, Path("rel") / "clips.csv")
    back = read_clip_table(tmp_path / "rel" / "clips.csv")
    assert back.column("audio")["b"] == os.path.join("..", "data", "audio", "b.wav")
    assert back.media_path("b", "audio").samefile(dataset / "audio" / "b.wav")


def test_write_table_without_path_makes_absolute_paths_relative(dataset: Path, tmp_path: Path) -> None:
    t = ClipTable(None, ["name", "audio"], [{"name": "a", "audio": str(dataset / "audio" / "a.wav")}])
    out = write_clip_table(t, tmp_path / "o" / "clips.csv")
    back = read_clip_table(out)
    assert back.column("audio")["a"] == os.path.join("..", "data", "audio", "a.wav")
    assert back.media_path("a", "audio").samefile(dataset / "audio" / "a.wav")


def test_duplicate_names_are_listed(tmp_path: Path) -> None:
    p = write(tmp_path / "clips.csv", "name,audio\nx,1.wav\ny,2.wav\nx,3.wav\nz,4.wav\ny,5.wav\nw,6.wav\n")
    with pytest.raises(TableError) as err:
        read_clip_table(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "2 duplicate clip names" in msg
    assert "x" in msg.split(":")[-1] and "y" in msg.split(":")[-1]
    assert msg.endswith("x, y")


def test_empty_name_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path / "clips.csv", "name,audio\na,a.wav\nb,b.wav\n,c.wav\n")
    with pytest.raises(TableError, match="empty clip name") as err:
        read_clip_table(p)
    assert f"{p}:4:" in str(err.value)


def test_empty_name_line_counts_physical_lines(tmp_path: Path) -> None:
    """A quoted cell spanning two lines: the reported line is the one an editor shows."""
    p = write(tmp_path / "clips.csv", 'name,text\na,"first line\nsecond line"\n,empty name here\n')
    with pytest.raises(TableError, match="empty clip name") as err:
        read_clip_table(p)
    assert f"{p}:4:" in str(err.value)


def test_missing_name_column(tmp_path: Path) -> None:
    p = write(tmp_path / "clips.csv", "clip,audio\na,a.wav\n")
    with pytest.raises(TableError, match=r"needs a 'name' column \(found: clip, audio\)") as err:
        read_clip_table(p)
    assert str(p) in str(err.value)


def test_empty_file_has_no_name_column(tmp_path: Path) -> None:
    p = write(tmp_path / "clips.csv", "")
    with pytest.raises(TableError, match="'name' column"):
        read_clip_table(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="file not found") as err:
        read_clip_table(tmp_path / "nope.csv")
    assert str(tmp_path / "nope.csv") in str(err.value)


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    p = write(tmp_path / "clips.csv", "name,text\na,café crème\n", encoding="latin-1")
    with pytest.raises(TableError, match="not UTF-8") as err:
        read_clip_table(p)
    assert str(err.value).startswith(str(p))
    assert "\n" not in str(err.value)


def test_header_only_table_is_empty(tmp_path: Path) -> None:
    t = read_clip_table(write(tmp_path / "clips.csv", "name,audio\n"))
    assert len(t) == 0 and t.names == [] and t.columns == ["name", "audio"]


# ---- select ---------------------------------------------------------------------------------

def test_select_orders_and_lists_unknown_names(dataset: Path) -> None:
    t = read_clip_table(dataset / "clips.csv")
    sub = t.select(["c", "a"])
    assert sub.names == ["c", "a"]
    assert sub.path == t.path
    assert sub.media_path("a", "audio") == dataset / "audio" / "a.wav"
    assert len(t) == 3  # the original is untouched
    with pytest.raises(TableError, match=r"2 clips not in the table: q, zz") as err:
        t.select(["a", "q", "b", "zz"])
    assert str(dataset / "clips.csv") in str(err.value)


# ---- labels ---------------------------------------------------------------------------------

def test_read_labels_ok(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,discrete,valence\ns1,happy,2.5\ns2, sad ,-1\ns3,neutral,0\n")
    assert read_labels(p) == {"s1": "happy", "s2": "sad", "s3": "neutral"}
    assert read_labels(p, classes=MER_CLASSES) == {"s1": "happy", "s2": "sad", "s3": "neutral"}
    assert read_labels(p, column="valence") == {"s1": "2.5", "s2": "-1", "s3": "0"}


def test_write_labels_roundtrip(tmp_path: Path) -> None:
    labels = {f"clip{i}": RAVDESS_CLASSES[i % 8] for i in range(20)}
    p = write_labels(labels, tmp_path / "sub" / "labels.csv")
    assert p.read_text(encoding="utf-8").splitlines()[:2] == ["name,discrete", "clip0,neutral"]
    back = read_labels(p, classes=RAVDESS_CLASSES)
    assert back == labels
    assert list(back) == list(labels)  # file order kept


def test_read_labels_unknown_class(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,discrete\ns1,happy\ns2,fearful\ns3,sad\n")
    assert read_labels(p)["s2"] == "fearful"  # without classes anything goes
    with pytest.raises(TableError) as err:
        read_labels(p, classes=MER_CLASSES)
    msg = str(err.value)
    assert f"{p}:3:" in msg
    assert "'s2'" in msg
    assert "'fearful'" in msg
    assert "neutral, angry, happy, sad, worried, surprise" in msg


def test_read_labels_duplicate_name(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,discrete\ns1,happy\ns2,sad\ns1,angry\n")
    with pytest.raises(TableError, match=r"1 duplicate clip names: s1") as err:
        read_labels(p, classes=MER_CLASSES)
    assert str(p) in str(err.value)


def test_read_labels_empty_label(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,discrete\ns1,happy\ns2,  \ns3,sad\n")
    with pytest.raises(TableError, match=r"clip 's2' has an empty label") as err:
        read_labels(p)
    assert f"{p}:3:" in str(err.value)


def test_read_labels_missing_column(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,emotion\ns1,happy\n")
    with pytest.raises(TableError, match=r"needs columns 'name' and 'discrete' \(found: name, emotion\)"):
        read_labels(p)
    assert read_labels(p, column="emotion") == {"s1": "happy"}


def test_read_labels_non_utf8(tmp_path: Path) -> None:
    p = write(tmp_path / "labels.csv", "name,discrete\nmañana,happy\n", encoding="latin-1")
    with pytest.raises(TableError, match="not UTF-8"):
        read_labels(p)


@needs_shared_mer
def test_read_labels_real_mer2023() -> None:
    train = read_labels(SHARED_MER / "train-labels.csv", classes=MER_CLASSES)
    test1 = read_labels(SHARED_MER / "test1-labels.csv", classes=MER_CLASSES)
    assert len(train) == 3373
    assert len(test1) == 411
    assert set(train.values()) == set(MER_CLASSES)
    assert not set(train) & set(test1)
    with pytest.raises(TableError, match="unknown class"):
        read_labels(SHARED_MER / "train-labels.csv", classes=RAVDESS_CLASSES)


# ---- read_names -----------------------------------------------------------------------------

def test_read_names_csv(tmp_path: Path) -> None:
    p = write(tmp_path / "names.csv", "name,discrete\ns3,happy\ns1,sad\ns2,neutral\n")
    assert read_names(p) == ["s3", "s1", "s2"]
    assert read_names(write(tmp_path / "upper.CSV", "name\nq\n")) == ["q"]


def test_read_names_txt(tmp_path: Path) -> None:
    p = write(tmp_path / "names.txt", "s3\n  s1  \n\n\ns2\n   \n")
    assert read_names(p) == ["s3", "s1", "s2"]
    assert read_names(write(tmp_path / "names", "a\nb")) == ["a", "b"]


def test_read_names_csv_without_name_column(tmp_path: Path) -> None:
    p = write(tmp_path / "names.csv", "clip\ns1\n")
    with pytest.raises(TableError, match="no 'name' column") as err:
        read_names(p)
    assert str(p) in str(err.value)


def test_read_names_non_utf8_txt_is_a_table_error(tmp_path: Path) -> None:
    p = write(tmp_path / "names.txt", "mañana\n", encoding="latin-1")
    with pytest.raises(TableError, match="not UTF-8"):
        read_names(p)


def test_read_names_clip_table_of_ravdess() -> None:
    names = read_names(RAVDESS / "clips.csv")
    assert len(names) == 360
    assert names[0] == "01-01-01-01-01-01"
    assert len(set(names)) == 360


@needs_shared_mer
def test_read_names_real_mer2023() -> None:
    assert len(read_names(SHARED_MER / "test2-names.csv")) == 412
    assert len(read_names(SHARED_MER / "test3-names.csv")) == 834
