from pathlib import Path

import pandas as pd
import pytest

from core.io import atomic_path, read_table, write_table
from core.layout import DataLayout, partition_keys, slugify
from orchestration.params import load_params
from tests.conftest import PARAMS


def test_slugify_gives_every_name_a_key():
    assert slugify("The Way of Water (2022)") == "the-way-of-water-2022"
    assert slugify("Amélie") == "amelie"
    # No ASCII letter at all: a key from the name's hash, the same every time.
    assert slugify("映画") == slugify("映画") != slugify("___")
    assert slugify("映画").startswith("movie-") and slugify("___").startswith("movie-")


def test_movies_lists_video_files_only(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    (layout.movies_dir / "Big Movie.MP4").write_bytes(b"x")
    (layout.movies_dir / "notes.txt").write_text("not a movie")
    assert layout.movies() == {"big-movie": layout.movies_dir / "Big Movie.MP4"}
    with pytest.raises(FileNotFoundError, match="other"):
        layout.movie("other")


def test_files_whose_names_give_one_key_get_distinct_keys(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    for name in ("a b.mp4", "a-b.mkv", "c.mp4"):
        (layout.movies_dir / name).write_bytes(b"x")
    movies = layout.movies()
    assert len(movies) == 3 and movies["c"].name == "c.mp4"
    by_file = {path.name: key for key, path in movies.items()}
    assert by_file["a b.mp4"].startswith("a-b-") and by_file["a-b.mkv"].startswith("a-b-")
    assert by_file["a b.mp4"] != by_file["a-b.mkv"]
    assert partition_keys(["a-b.mkv", "a b.mp4"]) == partition_keys(["a b.mp4", "a-b.mkv"])
    # A key disambiguated with a hash that happens to equal another file's key is extended.
    clash = by_file["a b.mp4"] + ".mp4"
    assert len(set(partition_keys(["a b.mp4", "a-b.mkv", clash]).values())) == 3


def test_atomic_file_write_replaces_or_keeps(tmp_path: Path):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame({"a": [1]}), target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        pd.DataFrame({"a": [2]}).to_parquet(tmp)
        raise RuntimeError("killed mid-write")
    assert read_table(target)["a"].tolist() == [1]
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_folder_swap(tmp_path: Path):
    target = tmp_path / "frames" / "m"
    for content in ("old", "new"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / f"{content}.txt").write_text(content)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in target.parent.iterdir()] == ["m"]


def test_read_missing_table_says_which(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="faces"):
        read_table(tmp_path / "faces" / "m.parquet")


def test_params_profile_overrides(monkeypatch):
    full = load_params(PARAMS, "full")
    tiny = load_params(PARAMS, "tiny")
    assert full.frames.stride == tiny.frames.stride == 50
    assert full.profile == "full" and tiny.profile == "tiny"
    assert tiny.characters.min_frames != full.characters.min_frames
    monkeypatch.setenv("CAMEO_PROFILE", "full")
    assert load_params(PARAMS).profile == "full"
    with pytest.raises(ValueError, match="unknown profile"):
        load_params(PARAMS, "huge")
