"""The same CPU kernels on every x86-64 machine, so the tiny CPU training is bit-identical
everywhere (as the sample movie is: libx264 runs its C code).

PyTorch, oneDNN and MKL each pick kernels for the CPU they find (AVX-512, AVX2, …), and the
picks round differently: a clone trained on another CPU changes `dvc.lock`. Pinning takes the
baseline every x86-64 CPU has: ATen's default (unvectorised) kernels, oneDNN's SSE4.1 code,
MKL's conditional numerical reproducibility, one thread (a reduction's order depends on the
thread count). They are read when the libraries load, so they are set before torch is
imported (`training.portable_cpu_kernels`; BENCHMARKS.md gives the cost).
"""

from __future__ import annotations

import os
import sys
import warnings

PORTABLE_CPU_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def pin_cpu_kernels() -> bool:
    """Set the portable kernel choice for this process and the ones it starts. Once torch is
    loaded it would change nothing: then say so and return False."""
    if "torch" in sys.modules:
        warnings.warn(
            "training.portable_cpu_kernels: torch is already loaded in this process, so its "
            "kernels are not pinned (run `cameo train` as its own process)",
            stacklevel=2,
        )
        return False
    os.environ.update(PORTABLE_CPU_KERNELS)
    return True
