"""Where `full` weights live and which ONNX Runtime providers to use."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime


def models_dir(path: str | Path | None = None) -> Path:
    """The local models directory: the argument, else $CAMEO_MODELS, else ./models."""
    return Path(path or os.environ.get("CAMEO_MODELS", "models")).resolve()


def onnx_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, CPU always."""
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
