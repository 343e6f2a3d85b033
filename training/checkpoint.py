"""Resumable checkpoints: the trainable weights (adapters in `load_ip_adapter`'s layout and
the ControlNet) plus everything a resumed run needs to continue bit for bit (optimiser,
schedule, sampler position, every rank's RNG streams), written atomically."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.model import CheckpointInfo, save_checkpoint
from training.outputs import CHECKPOINT_PREFIX, FINAL_DIR, STATE_FILE


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


def save_training_checkpoint(
    output_dir: Path,
    step: int,
    unet: torch.nn.Module,
    controlnet: torch.nn.Module,
    info: CheckpointInfo,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint-<step>/ atomically (a temp folder, then one rename); keep the last
    `keep`. Holds the trainable weights in `save_checkpoint`'s layout and the training state."""
    target = output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = output_dir / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(unet, controlnet, tmp, info)
    torch.save(state, tmp / STATE_FILE)
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
