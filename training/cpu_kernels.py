"""The same CPU kernels on every x86-64 machine, so the tiny CPU training is bit-identical
everywhere (as the sample movie is: libx264 runs its C code).

PyTorch, oneDNN, NNPACK and MKL each pick kernels for the CPU they find (AVX-512, AVX2, …),
and the picks round differently: a clone trained on another CPU changes `dvc.lock`. Pinning
takes the baseline every x86-64 CPU has: ATen's default (unvectorised) kernels, MKL's
conditional numerical reproducibility (the same results on every CPU at a fixed thread
count), one thread (a reduction's order depends on the thread count). oneDNN and NNPACK are
routed around: capping oneDNN's instruction set is not enough, since it also sizes its blocks
(and so its summation order) from the CPU's cache sizes, and NNPACK has no such switch; their
convolutions and matrix products then run as ATen's im2col and MKL's GEMM. The variables are
read when the libraries load, so they are set before torch is imported
(`training.portable_cpu_kernels`; BENCHMARKS.md gives the cost). `cameo train
--compare-forward-digests` names the first module whose output differs between two machines.
"""

from __future__ import annotations

import os
import sys
import warnings

PORTABLE_CPU_KERNELS = {
    "ATEN_CPU_CAPABILITY": "default",
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
    route_around_onednn()
    return True


def route_around_onednn() -> None:
    """No oneDNN or NNPACK kernel in this process: their convolutions and matrix products run
    as ATen's im2col and MKL's GEMM (unlike the variables, this can be set at any time)."""
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
