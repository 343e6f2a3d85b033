"""Where `full` weights live, the profile switch of every prior, which ONNX Runtime providers
to use and whether an ONNX model takes batches."""

from __future__ import annotations

import hashlib
import os
import tempfile
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


def takes_batches(session: onnxruntime.InferenceSession) -> bool:
    """Whether a session's first input has a free batch axis (a name or none, not 1)."""
    batch = session.get_inputs()[0].shape[0]
    return not isinstance(batch, int) or batch != 1


def by_profile(profile: str, full: Callable[[], T], tiny: Callable[[], T]) -> T:
    """The one profile switch of the priors: the `full` loader (local weights) or the offline
    `tiny` variant."""
    if profile == "full":
        return full()
    if profile == "tiny":
        return tiny()
    raise ValueError(f"unknown profile {profile!r}")


def tiny_model_file(data: bytes, stem: str, cache_dir: str | Path | None = None) -> Path:
    """A tiny profile's serialized model written once, atomically, under `cache_dir` (default:
    `<tmp>/cameo-<stem>`), named by its content hash so a file from another builder version
    is never used."""
    folder = Path(cache_dir or Path(tempfile.gettempdir()) / f"cameo-{stem}")
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return path
