"""What identifies a version: DVC's md5 of a file or folder, the md5 a `dvc.lock` records for
an output, and the git commit and working tree that code comes from. Training tags its runs
with these; lineage follows them back."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

LOCK_FILE = "dvc.lock"


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for a file or folder (folders: '<md5>.dir'), computed as DVC does."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def lock_outs(lock: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every out of a parsed dvc.lock, in any stage."""
    return [
        out for stage in (lock or {}).get("stages", {}).values() for out in stage.get("outs", [])
    ]


def locked_md5(path: Path, lock_file: Path) -> str | None:
    """The md5 `lock_file` records for the out at `path`; None when it does not list it."""
    if not lock_file.is_file():
        return None
    for out in lock_outs(yaml.safe_load(lock_file.read_text())):
        if (lock_file.parent / out["path"]).resolve() == path.resolve():
            return out.get("md5")
    return None


def locked_out_path(lock: dict[str, Any] | None, md5: str) -> str | None:
    """The path of the out that a parsed dvc.lock records with `md5`, in any stage."""
    return next((out["path"] for out in lock_outs(lock) if out.get("md5") == md5), None)


def git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`git ARGS` in `root`, output captured, never raising on a non-zero exit."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def git_root(path: str | Path | None = None) -> Path | None:
    """The top of the git working tree holding `path` (default: the working directory);
    None outside one."""
    start = Path(path or Path.cwd())
    if not start.is_dir():
        return None
    try:
        result = git(start, "rev-parse", "--show-toplevel")
    except OSError:
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def git_commit(root: Path) -> str:
    """HEAD of the working tree at `root`; "unknown" outside git."""
    try:
        result = git(root, "rev-parse", "HEAD")
    except OSError:
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"
