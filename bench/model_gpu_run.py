"""What a run of `bench/model_gpu.py` measures and finds, shared by its parts (the training
step in `bench/model_gpu.py`, inference in `bench/model_gpu_inference.py`, the BENCHMARKS.md
section in `bench/model_gpu_render.py`): the run's settings, the configurations of the training
step, their timings, everything measured, and how a call is timed and its FLOPs counted."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.window import Outcomes
from training.model import ModelConfig
from training.params import Acceleration, CompileBackend

BODY_TOKENS = 1025  # body-encoder tokens per sample at full size (InternViT: 32 x 32 patches + CLS)
BUDGET_GIB = 80 * 10**9 / 2**30  # the article's 80 GB H100s
# Dense bf16 tensor-core peaks from the datasheets (TFLOP/s), by a part of the device name.
DATASHEET_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 80GB HBM3": 989.0,  # SXM
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
}


@dataclass(frozen=True)
class Run:
    """What one run measures, and at which size."""

    config: ModelConfig
    size: int  # image side in pixels
    body_tokens: int  # body-encoder tokens per sample (InternViT: 32 x 32 patches + CLS)
    device: torch.device
    steps: int  # timed training steps (median)
    warmup: int  # untimed training steps first (the first also compiles)
    profiled_steps: int  # training steps traced by the profiler for the breakdown
    batches: tuple[int, ...]  # of the best combination
    matmul: int  # side of the ceiling's square matmul
    inference_steps: int
    inference_runs: int
    smoke: bool

    @property
    def compile_backend(self) -> CompileBackend:
        """The smoke run checks code paths, not kernels: dynamo captures the compiled blocks
        and nothing is traced further (inductor's C++ builds, then AOTAutograd's tracing,
        dominated its time; tests/training/test_acceleration.py checks AOTAutograd's graphs
        and inductor's numbers)."""
        return "eager" if self.smoke else "inductor"


@dataclass(frozen=True)
class Lever:
    """One configuration of the training step."""

    name: str
    acceleration: Acceleration = field(default_factory=Acceleration)
    pure_bf16: bool = False
    batch: int = 1


LEVERS = (
    Lever("today"),
    Lever("channels_last", Acceleration(channels_last=True)),
    Lever("cudnn_benchmark", Acceleration(cudnn_benchmark=True)),
    Lever("flash attention", Acceleration(attention_backend="flash")),
    Lever("cuDNN attention", Acceleration(attention_backend="cudnn")),
    Lever("regional compile", Acceleration(compile=True)),
    Lever("pure bf16", pure_bf16=True),
)


@dataclass
class Timing:
    """One configuration's figures; `error` says why there are none (out of memory, no
    kernel for this device)."""

    lever: Lever
    seconds: float | None = None  # median step
    first_seconds: float | None = None  # the first step, compile included
    peak_gib: float | None = None
    flops: float | None = None  # per step, counted eagerly
    error: str | None = None

    @property
    def per_sample(self) -> float | None:
        return None if self.seconds is None else self.seconds / self.lever.batch

    @property
    def compile_seconds(self) -> float | None:
        if self.seconds is None or not self.lever.acceleration.compile:
            return None
        return self.first_seconds - self.seconds

    @property
    def tflops(self) -> float | None:
        return None if self.seconds is None else self.flops / self.seconds / 1e12


@dataclass
class Results(Outcomes):
    """Everything measured so far; `render` shows the rest as pending."""

    device_name: str | None = None
    ceiling_tflops: float | None = None
    training: list[Timing] = field(default_factory=list)
    best: list[Timing] = field(default_factory=list)
    breakdown: dict[str, float] | None = None  # seconds per step by kernel kind
    busy: float | None = None  # share of the profiled time the GPU computes
    inference: dict[str, Any] | None = None  # bench.model_gpu_inference: eager, with_levers

    @property
    def peak_tflops(self) -> float | None:
        name = self.device_name or ""
        return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def flops_by_module(fn: Callable[[], Any]) -> dict[str, float]:
    """FLOPs of one call of `fn`: in all (`Global`) and per outermost module class called."""
    with FlopCounterMode(display=False, depth=1) as counter:
        fn()
    return {name: float(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


def counted_flops(fn: Callable[[], Any]) -> float:
    return flops_by_module(fn)["Global"]


def timing_line(timing: Timing) -> str:
    if timing.seconds is None:
        return f"training: {timing.lever.name}: {timing.error or 'not measured'}"
    return (
        f"training: {timing.lever.name}: {timing.seconds:.4f} s/step, "
        f"{timing.per_sample:.4f} s/sample, {timing.tflops:.2f} TFLOP/s"
        + (f", compile {timing.compile_seconds:.1f} s" if timing.compile_seconds else "")
    )
