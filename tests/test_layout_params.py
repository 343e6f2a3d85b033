from pathlib import Path

import pandas as pd
import pytest

from assets.layout import DataLayout, atomic_path, read_table, slugify, write_table
from assets.params import load_params
from tests.conftest import PARAMS


def test_slugify_makes_partition_keys():
    assert slugify("The Way of Water (2022)") == "the-way-of-water-2022"
    with pytest.raises(ValueError, match="partition key"):
        slugify("___")


def test_movies_lists_video_files_only(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    (layout.movies_dir / "Big Movie.MP4").write_bytes(b"x")
    (layout.movies_dir / "notes.txt").write_text("not a movie")
    assert layout.movies() == {"big-movie": layout.movies_dir / "Big Movie.MP4"}
    with pytest.raises(FileNotFoundError, match="other"):
        layout.movie("other")


def test_two_files_with_one_key_is_an_error_naming_both(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    (layout.movies_dir / "a b.mp4").write_bytes(b"x")
    (layout.movies_dir / "a-b.mkv").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"a b\.mp4.*a-b\.mkv"):
        layout.movies()


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
    assert full["frames"]["stride"] == tiny["frames"]["stride"] == 50
    assert full["profile"] == "full" and "profiles" not in full
    assert tiny["characters"]["min_frames"] != full["characters"]["min_frames"]
    monkeypatch.setenv("CAMEO_PROFILE", "full")
    assert load_params(PARAMS)["profile"] == "full"
    with pytest.raises(ValueError, match="unknown profile"):
        load_params(PARAMS, "huge")
