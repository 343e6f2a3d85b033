"""Where every stage reads and writes under $CAMEO_DATA (the data contract), and atomic writes."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

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
DEFAULT_MAX_PIXELS = 40_000_000  # params `images.max_pixels` overrides it
TMP_PREFIX = ".tmp-"
STAGE_STATUS_OK = "ok"


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file and says why."""


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


def partition_keys(names: list[str]) -> dict[str, str]:
    """File name → partition key, unique: files whose stems slug to one key (`a b.mp4`,
    `a-b.mp4`) each get `-<hash of the file name>` appended, so the key of a file depends
    only on its own name and on which other names collide with it."""
    keys = {name: slugify(Path(name).stem) for name in names}
    while True:
        counts = Counter(keys.values())
        colliding = [name for name, key in keys.items() if counts[key] > 1]
        if not colliding:
            return keys
        for name in colliding:
            keys[name] = f"{keys[name]}-{_digest(name, 6)}"


@dataclass(frozen=True)
class SkippedInput:
    """A file under movies/ or singles/ that is not used, and why."""

    path: Path
    reason: str


def _scan(folder: Path, extensions: frozenset[str], kind: str) -> tuple[list[Path], list]:
    """The usable files of an input folder and the skipped ones with reasons.

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
        elif path.is_dir():
            skipped.append(SkippedInput(path, f"a folder, not a {kind} file"))
        elif suffix in extensions:
            usable.append(path)
        elif kind == "video" and suffix in AUDIO_EXTENSIONS:
            skipped.append(SkippedInput(path, f"audio-only file ({suffix}): no video to mine"))
        else:
            skipped.append(
                SkippedInput(path, f"not a {kind} format cameo reads ({suffix or 'no extension'})")
            )
    return usable, skipped


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

    def scan_singles(self) -> tuple[list[Path], list[SkippedInput]]:
        return _scan(self.singles_dir, IMAGE_EXTENSIONS, "image")

    @property
    def triplets_dir(self) -> Path:
        return self.root / "triplets"

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
                if not _temp_is_live(path.name):
                    _remove(path)
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


def _temp_is_live(name: str) -> bool:
    """Whether the process that made a temp file (named by `atomic_path`) still runs.

    Temp files of other hosts (a shared volume) are left to their own host.
    """
    match = re.search(r"@([A-Za-z0-9-]+)\.(\d+)\.[^.]+$", name)
    if match is None or match.group(1) != _host():
        return match is not None
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_folder(tmp: Path, target: Path, old: Path) -> None:
    """Put folder `tmp` at `target`; whatever was there ends up at `old`.

    Readers always see either the old or the new folder, and concurrent replacers never
    fail: the last one wins. Where the file system cannot exchange, the old folder is moved
    aside first (a short window without `target`), retried if another replacer interferes.
    """
    while True:
        try:
            _exchange(tmp, target)
            os.rename(tmp, old)  # tmp now holds what target held
            return
        except FileNotFoundError:
            pass  # no target (yet): a plain rename below
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
                raise
            _remove(old)  # a previous round's old folder
            with suppress(FileNotFoundError):
                target.rename(old)
        try:
            os.rename(tmp, target)
            return
        except OSError as e:
            # Another replacer put a folder there first: exchange with it next time round.
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` atomically.

    Works for files and folders. A failure leaves `target` as it was; a kill leaves only a
    `.tmp-…@<host>.<pid>.…` sibling behind, which nothing reads and `clean_stale_temps`
    removes once that process is gone.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(
        tempfile.mkdtemp(
            prefix=f"{TMP_PREFIX}{target.name}@{_host()}.{os.getpid()}.", dir=target.parent
        )
    )
    tmp = tmp_root / target.name
    try:
        yield tmp
        if tmp.is_dir():
            _replace_folder(tmp, target, tmp_root / f"{target.name}.old")
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, scaling 16-bit grey (PNG: mode I;16, older Pillow: I) to 0-255 instead of
    clipping it to white as `convert("RGB")` does."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.clip(np.asarray(image), 0, 65535)
        image = Image.fromarray((values // 257).astype(np.uint8))
    return image.convert("RGB")


def load_rgb(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """An image file as 8-bit RGB, upright (EXIF orientation applied).

    Images over `max_pixels` (default DEFAULT_MAX_PIXELS) are refused before decoding.
    Raises ImageReadError naming the file for anything unusable.
    """
    limit = max_pixels or DEFAULT_MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise ImageReadError(
                        f"{path.name}: {width}x{height} = {width * height} pixels, over the "
                        f"limit of {limit} (images.max_pixels)"
                    )
                return np.asarray(_to_rgb(ImageOps.exif_transpose(image)))
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path.name}: refused as a decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow raises these for unreadable, truncated or unsupported files.
        raise ImageReadError(f"{path.name}: unreadable image ({e})") from e


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


def write_json(data: dict[str, Any], target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
