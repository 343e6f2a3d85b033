"""Where every stage reads and writes under $CAMEO_DATA (the data contract), and atomic writes."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


def slugify(stem: str) -> str:
    """Partition key of a movie: its file stem, lower-cased, runs of other characters as '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")
    if not slug:
        raise ValueError(f"cannot make a partition key from file name {stem!r}")
    return slug


@dataclass(frozen=True)
class DataLayout:
    """The folders and files of the data contract, all under one root."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> DataLayout:
        return cls(Path(root or os.environ.get("CAMEO_DATA", "data")).resolve())

    @property
    def movies_dir(self) -> Path:
        return self.root / "movies"

    def movies(self) -> dict[str, Path]:
        """Every movie file under movies/, keyed by partition key."""
        found: dict[str, Path] = {}
        if not self.movies_dir.is_dir():
            return found
        for path in sorted(self.movies_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            key = slugify(path.stem)
            if key in found:
                raise ValueError(
                    f"{found[key].name} and {path.name} both map to partition {key!r}; rename one"
                )
            found[key] = path
        return found

    def movie(self, key: str) -> Path:
        movies = self.movies()
        if key not in movies:
            raise FileNotFoundError(f"no movie for partition {key!r} under {self.movies_dir}")
        return movies[key]

    @property
    def singles_dir(self) -> Path:
        return self.root / "singles"

    @property
    def triplets_dir(self) -> Path:
        return self.root / "triplets"

    def stage_dir(self, stage: str, movie: str) -> Path:
        """Per-movie folder of a stage's images, e.g. masks/<movie>/."""
        return self.root / stage / movie

    def table(self, stage: str, movie: str) -> Path:
        """The per-movie table of a stage, e.g. faces/<movie>.parquet."""
        return self.root / stage / f"{movie}.parquet"

    def contact_sheet(self, stage: str, movie: str) -> Path:
        return self.root / stage / f"{movie}.contact_sheet.jpg"

    def ground_truth(self, movie: str) -> Path:
        return self.root / "ground_truth" / f"{movie}.json"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    Works for files and folders. A failure or a kill leaves `target` as it was and only a
    `.tmp-` sibling behind, which nothing reads.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    tmp = tmp_root / target.name
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            # A folder cannot be renamed over a non-empty one: move the old one aside first.
            old = tmp_root / f"{target.name}.old"
            target.rename(old)
            tmp.rename(target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def save_image(array: np.ndarray, target: Path, **options) -> None:
    """Write an image array atomically; the format follows the file suffix."""
    with atomic_path(target) as tmp:
        Image.fromarray(array).save(
            tmp, format=Image.registered_extensions()[target.suffix.lower()], **options
        )


def write_table(df: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def read_table(target: Path) -> pd.DataFrame:
    if not target.is_file():
        raise FileNotFoundError(f"{target} does not exist: materialise its stage first")
    return pd.read_parquet(target)


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for a file or folder (folders: '<md5>.dir'), computed as DVC does."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value
