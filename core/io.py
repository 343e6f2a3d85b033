"""Atomic writes (files and folders), images and tables in and out.

A write goes to a temp sibling named after its host and process and is renamed into place,
so a killed run never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000  # params `images.max_pixels` overrides it
TMP_PREFIX = ".tmp-"


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file and says why."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


def temp_is_live(name: str) -> bool:
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


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)


def link_tree(source: Path, target: Path) -> None:
    """Copy the folder `source` to `target` as hard links to its files where the file system
    allows (no second copy on disk), as copies where not. Only for files that are replaced,
    never written in place: an in-place write would change both."""
    shutil.copytree(source, target, copy_function=_link_or_copy)


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
            remove_path(old)  # a previous round's old folder
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


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """8-bit RGB, scaling 16-bit grey (PNG: mode I;16, older Pillow: I) to 0-255 instead of
    clipping it to white as `convert("RGB")` does. An image with transparency (a sprite: RGBA,
    grey with alpha, a palette with a transparent entry) is composited on white, as a page
    shows it; one with nothing visible is refused."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.clip(np.asarray(image), 0, 65535)
        image = Image.fromarray((values // 257).astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        if not rgba.getchannel("A").getbbox():
            raise ImageReadError(f"{name}: fully transparent, nothing to see")
        image = Image.new("RGBA", rgba.size, "white")
        image.alpha_composite(rgba)
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
                return np.asarray(_to_rgb(ImageOps.exif_transpose(image), path.name))
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"{path.name}: refused as a decompression bomb ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        # Pillow raises these for unreadable, truncated or unsupported files.
        raise ImageReadError(f"{path.name}: unreadable image ({e})") from e


def read_alpha(path: Path) -> np.ndarray | None:
    """An image's transparency as a boolean mask (alpha at least half), upright, or None when
    it has none: a sprite's ground-truth character mask. `load_rgb` has read the file first."""
    with Image.open(path) as image:
        if not image.has_transparency_data:
            return None
        alpha = ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
        return np.asarray(alpha) >= 128


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


def write_json(data: dict[str, Any], target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def read_json(source: Path) -> Any:
    return json.loads(source.read_text())
