"""Where `full` weights live, the profile switch of every prior, and which ONNX Runtime
providers to use."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnxruntime

T = TypeVar("T")


def models_dir(path: str | Path | None = None) -> Path:
    """The local models directory: the argument, else $CAMEO_MODELS, else ./models."""
    return Path(path or os.environ.get("CAMEO_MODELS", "models")).resolve()


def onnx_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, CPU always."""
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def by_profile(profile: str, full: Callable[[], T], tiny: Callable[[], T]) -> T:
    """The one profile switch of the priors: the `full` loader (local weights) or the offline
    `tiny` variant."""
    if profile == "full":
        return full()
    if profile == "tiny":
        return tiny()
    raise ValueError(f"unknown profile {profile!r}")
