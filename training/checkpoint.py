"""Resumable checkpoints: the trainable weights (adapters in `load_ip_adapter`'s layout and
the ControlNet) plus everything a resumed run needs to continue bit for bit (optimiser,
schedule, sampler position, every rank's RNG streams), written atomically.

A checkpoint is verifiable: its last file, `manifest.json`, lists every other file's size and
sha256. `--resume` takes the newest checkpoint that verifies and says which ones it skipped
and why, naming the file. Before writing, the free space is checked against what the
checkpoint will take; a disk that fills up during the write is reported the same way."""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.versioning import sha256
from training.checks import TrainingError
from training.model import CheckpointInfo, save_checkpoint
from training.outputs import CHECKPOINT_PREFIX, FINAL_DIR, STATE_FILE

MANIFEST = "manifest.json"  # written last: sizes and sha256 of every other file
GIB = 2**30


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete resumable checkpoints, oldest first (a killed write leaves only a .tmp-)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_manifest(folder: Path) -> None:
    """List every file of `folder` with its size and sha256, in `manifest.json` (last)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)} for p in files
    }
    (folder / MANIFEST).write_text(json.dumps(entries, indent=2))


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (naming the file), or None when it verifies."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"{MANIFEST} missing: the write was cut short"
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError) as error:
        return f"{MANIFEST} unreadable ({error})"
    for name, expected in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name} has {size} bytes, the manifest says {expected['size']}"
        if sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 (damaged on disk)"
    return None


def newest_verified(output_dir: Path, say: Callable[[str], None]) -> Path | None:
    """The newest checkpoint of `output_dir` that verifies, saying in one line each why a newer
    one is skipped; None when there is none. Refuses when checkpoints exist and none verifies."""
    found = checkpoints(output_dir)
    problems = []
    for folder in reversed(found):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        problems.append(f"{folder.name}: {problem}")
        say(f"skipping {folder}: {problem}")
    if problems:
        raise TrainingError(
            f"no checkpoint in {output_dir} verifies ({'; '.join(problems)}): start a new run "
            "with another output_dir, or remove them"
        )
    return None


def choose_checkpoint(output_dir: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from, or the reason to refuse (for rank 0 to broadcast)."""
    try:
        return newest_verified(output_dir, lambda line: print(line, file=sys.stderr)), None
    except TrainingError as error:
        return None, str(error)


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested state (the payload torch.save and safetensors write)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse, before writing, a checkpoint that the disk holding `folder` has no room for."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise TrainingError(
            f"no room for checkpoint {folder}: it needs {needed / GIB:.2f} GiB, "
            f"{free / GIB:.2f} GiB are free"
        )


@contextmanager
def disk_errors(target: Path, needed: int) -> Iterator[None]:
    """A disk that fills up during a write, reported in one line naming `target` and the free
    space (torch.save reports it as `unexpected pos`, without a word about space)."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
        full = full or "unexpected pos" in str(error) or "No space left" in str(error)
        if not full:
            raise
        free = shutil.disk_usage(target.parent).free
        raise TrainingError(
            f"disk full while writing {target}: it needs {needed / GIB:.2f} GiB, "
            f"{free / GIB:.2f} GiB are free; the previous checkpoints are intact"
        ) from None


def save_training_checkpoint(
    output_dir: Path,
    step: int,
    unet: torch.nn.Module,
    controlnet: torch.nn.Module,
    info: CheckpointInfo,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint-<step>/ atomically (a temp folder, its manifest last, then one rename);
    keep the last `keep`. Holds the trainable weights in `save_checkpoint`'s layout and the
    training state. Checks the free space first."""
    target = output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = output_dir / f".tmp-{target.name}"
    trainable = [p for m in (unet, controlnet) for p in m.parameters() if p.requires_grad]
    needed = tensor_bytes(trainable) + tensor_bytes(state)
    shutil.rmtree(tmp, ignore_errors=True)
    check_free_space(output_dir, needed)
    with disk_errors(target, needed):
        try:
            save_checkpoint(unet, controlnet, tmp, info)
            torch.save(state, tmp / STATE_FILE)
            write_manifest(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # free what the failed write took
            raise
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_final(
    output_dir: Path, unet: torch.nn.Module, controlnet: torch.nn.Module, info: CheckpointInfo
) -> Path:
    """Write `final/` (the trained weights, a DVC output) atomically: a temp folder, then one
    rename."""
    final_dir = output_dir / FINAL_DIR
    tmp = output_dir / f".tmp-{FINAL_DIR}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(unet, controlnet, tmp, info)
    shutil.rmtree(final_dir, ignore_errors=True)
    tmp.rename(final_dir)
    return final_dir
