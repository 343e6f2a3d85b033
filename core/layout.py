"""The data contract: where every stage reads and writes under $CAMEO_DATA, how input files
become partition keys, which inputs are skipped and why, and the build lock."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from core.io import TMP_PREFIX, read_json, remove_path, temp_is_live

# Containers PyAV (FFmpeg) demuxes that carry video. Anything else under movies/ is listed as
# skipped with the reason, never dropped silently.
VIDEO_EXTENSIONS = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".qt",
        ".mkv",
        ".webm",
        ".avi",
        ".flv",
        ".f4v",
        ".wmv",
        ".asf",
        ".mpg",
        ".mpeg",
        ".m2v",
        ".vob",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".3g2",
        ".ogv",
        ".mxf",
        ".dv",
        ".y4m",
        ".nut",
    ]
)
AUDIO_EXTENSIONS = frozenset(
    [".m4a", ".mp3", ".wav", ".flac", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aiff"]
)
# Every still-image format Pillow can open (GIF: its first frame).
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)
STAGE_STATUS_OK = "ok"


class BuildLockedError(RuntimeError):
    """Another build holds the data directory's lock."""


def _ascii_slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def slugify(stem: str) -> str:
    """Partition key of a file stem: lower-cased ASCII, runs of other characters as '-'.

    Accents are folded (`Amélie` → `amelie`); a stem with no ASCII letter or digit at all
    (`映画`) gets `movie-<hash of the stem>`, so every file name has a key.
    """
    return _ascii_slug(stem) or f"movie-{_digest(stem)}"


def unique_keys(names: list[str], key: Callable[[str], str]) -> dict[str, str]:
    """File name → `key(name)`, unique: files whose keys collide each get `-<hash of the file
    name>` appended, so the key of a file depends only on its own name and on which other
    names collide with it."""
    keys = {name: key(name) for name in names}
    while True:
        counts = Counter(keys.values())
        colliding = [name for name, key in keys.items() if counts[key] > 1]
        if not colliding:
            return keys
        for name in colliding:
            keys[name] = f"{keys[name]}-{_digest(name, 6)}"


def partition_keys(names: list[str]) -> dict[str, str]:
    """File name → partition key: the slug of its stem, unique (`a b.mp4`, `a-b.mp4`)."""
    return unique_keys(names, lambda name: slugify(Path(name).stem))


def single_ids(names: list[str]) -> dict[str, str]:
    """File name under singles/ → single-image ID: its stem, after its folder's name where it
    lies in one (`anime/hero.png`: `anime-hero`), unique (`hero.png`, `hero.jpg`)."""
    return unique_keys(names, lambda name: "-".join(Path(name).with_suffix("").parts))


@dataclass(frozen=True)
class SkippedInput:
    """A file under movies/ or singles/ that is not used, and why."""

    path: Path
    reason: str


def _scan(
    folder: Path, extensions: frozenset[str], kind: str, subfolders: tuple[str, ...] = ()
) -> tuple[list[Path], list]:
    """The usable files of an input folder and the skipped ones with reasons; `subfolders`
    are scanned the same way.

    Hidden files (a leading '.', e.g. our own temp files) are not inputs.
    """
    usable: list[Path] = []
    skipped: list[SkippedInput] = []
    if not folder.is_dir():
        return usable, skipped
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        suffix = path.suffix.lower()
        if path.is_symlink() and not path.exists():
            skipped.append(SkippedInput(path, f"dangling symlink to {os.readlink(path)}"))
        elif path.is_dir() and path.name in subfolders:
            inside, skipped_inside = _scan(path, extensions, kind)
            usable += inside
            skipped += skipped_inside
        elif path.is_dir():
            skipped.append(SkippedInput(path, f"a folder, not {_a(kind)} file"))
        elif suffix in extensions:
            usable.append(path)
        elif kind == "video" and suffix in AUDIO_EXTENSIONS:
            skipped.append(SkippedInput(path, f"audio-only file ({suffix}): no video to mine"))
        else:
            extension = suffix or "no extension"
            skipped.append(SkippedInput(path, f"not {_a(kind)} format cameo reads ({extension})"))
    return usable, skipped


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def source_fingerprint(path: Path) -> dict[str, Any]:
    """What identifies the version of an input file: a replaced file changes it."""
    stat = path.stat()
    return {"file": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


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

    def scan_movies(self) -> tuple[dict[str, Path], list[SkippedInput]]:
        """Every video file under movies/ keyed by partition key, and the files skipped."""
        videos, skipped = _scan(self.movies_dir, VIDEO_EXTENSIONS, "video")
        keys = partition_keys([p.name for p in videos])
        return {keys[p.name]: p for p in videos}, skipped

    def movies(self) -> dict[str, Path]:
        return self.scan_movies()[0]

    def movie(self, key: str) -> Path:
        movies = self.movies()
        if key not in movies:
            raise FileNotFoundError(f"no movie for partition {key!r} under {self.movies_dir}")
        return movies[key]

    @property
    def singles_dir(self) -> Path:
        return self.root / "singles"

    @property
    def anime_singles_dir(self) -> Path:
        """Single images drawn in anime style (the rest of singles/ are photographs)."""
        return self.singles_dir / "anime"

    def single_style(self, path: Path) -> str:
        return "anime" if path.parent == self.anime_singles_dir else "photo"

    def scan_singles(self) -> tuple[dict[str, Path], list[SkippedInput]]:
        """Every image file under singles/ and singles/anime/ keyed by single-image ID, and
        the files skipped."""
        images, skipped = _scan(
            self.singles_dir, IMAGE_EXTENSIONS, "image", (self.anime_singles_dir.name,)
        )
        names = {p: p.relative_to(self.singles_dir).as_posix() for p in images}
        ids = single_ids(list(names.values()))
        return {ids[names[p]]: p for p in images}, skipped

    @property
    def synthetic_dir(self) -> Path:
        """Synthetic characters (article section 4.1): descriptions.json, and one folder per
        character with its drawn batch and the triplets made from it."""
        return self.root / "synthetic"

    @property
    def synthetic_descriptions(self) -> Path:
        return self.synthetic_dir / "descriptions.json"

    def synthetic_batch(self, character_id: str) -> Path:
        """One character's folder: batch.json, image-<i>.png, and once its stages ran,
        pairs.parquet, skipped.parquet and triplets/<triplet_id>/."""
        return self.synthetic_dir / character_id

    def synthetic_characters(self) -> list[str]:
        """The characters descriptions.json lists now (none before it is written)."""
        if not self.synthetic_descriptions.is_file():
            return []
        described = read_json(self.synthetic_descriptions)["characters"]
        return [c["character_id"] for c in described]

    @property
    def triplets_dir(self) -> Path:
        return self.root / "triplets"

    @property
    def triplets_cache_dir(self) -> Path:
        """Each movie's and single image's triplets, kept between builds
        (assets/triplet_cache.py)."""
        return self.root / "triplets-cache"

    @property
    def features_dir(self) -> Path:
        """Precomputed conditioning features of the triplets, one folder per encoder identity."""
        return self.root / "features"

    def stage_dir(self, stage: str, movie: str) -> Path:
        """Per-movie folder of a stage's images, e.g. masks/<movie>/."""
        return self.root / stage / movie

    def table(self, stage: str, movie: str) -> Path:
        """The per-movie table of a stage, e.g. faces/<movie>.parquet."""
        return self.root / stage / f"{movie}.parquet"

    def stage_status(self, stage: str, movie: str) -> Path:
        """Whether a stage completed for a movie (and from which version of its file)."""
        return self.root / stage / f"{movie}.status.json"

    def contact_sheet(self, stage: str, movie: str) -> Path:
        return self.root / stage / f"{movie}.contact_sheet.jpg"

    def ground_truth(self, movie: str) -> Path:
        return self.root / "ground_truth" / f"{movie}.json"

    @property
    def metrics_file(self) -> Path:
        """The dataset's counts, a DVC metrics file."""
        return self.root / "metrics.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".cameo-build.lock"

    def clean_stale_temps(self, *folders: str) -> list[Path]:
        """Remove temp files and folders left by killed processes (of this host) from the
        root and the given folders (default: every folder of the root); return them."""
        parents = [self.root] + [
            self.root / f for f in (folders or [p.name for p in self.root.glob("*/")])
        ]
        removed = []
        for parent in parents:
            for path in parent.glob(f"{TMP_PREFIX}*"):
                if not temp_is_live(path.name):
                    remove_path(path)
                    removed.append(path)
        return removed

    @contextmanager
    def build_lock(self, wait: bool = False) -> Iterator[None]:
        """Hold the data directory's build lock (released by the OS if the process dies).

        Without `wait`, a held lock raises BuildLockedError naming its holder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise BuildLockedError(
                    f"{self.root} is being built by {holder}; wait for it to finish "
                    "(or pass --wait)"
                ) from None
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)
