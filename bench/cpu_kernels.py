"""The cost of portable CPU kernels (`training.portable_cpu_kernels`, on in the tiny profile):
the tiny demo training, 24 steps from the features stage on the sample triplets (`make demo`
first), as its own process with the kernels pinned and with this CPU's own, alternating, 3
runs each; medians of wall time."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from bench.report import REPO, write_section
from core.layout import DataLayout
from training.cpu_kernels import PORTABLE_CPU_KERNELS

REPEATS = 3


def timed_training(root: Path, tmp: Path, portable: bool, run: int) -> float:
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"]["portable_cpu_kernels"] = portable
    params = tmp / f"params-{portable}.yaml"
    params.write_text(yaml.safe_dump(values))
    command = [
        sys.executable, "-m", "orchestration.cli.train", "--params", str(params),
        "--data", str(root), "--unlocked", "--no-progress", "--no-register",
        "--output-dir", str(tmp / f"out-{portable}-{run}"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlruns.db'}"}
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=tmp, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    layout = DataLayout.from_env()
    if not (layout.triplets_dir / "manifest.parquet").is_file():
        sys.exit("bench/cpu_kernels.py needs the sample triplets and features (make demo)")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(REPEATS):
            for portable in (True, False):
                seconds[portable].append(timed_training(layout.root, Path(tmp), portable, run))
    pinned, native = statistics.median(seconds[True]), statistics.median(seconds[False])
    pins = ", ".join(f"`{k}={v}`" for k, v in PORTABLE_CPU_KERNELS.items())
    body = f"""
`cameo train` of the tiny profile (24 steps from the features stage, the sample triplets, one
process, startup included), {REPEATS} alternating runs each, medians; this CPU's own kernels:
{torch.backends.cpu.get_cpu_capability()}. Pinned: {pins}.

| kernels | seconds |
|---|---|
| this CPU's own | {native:.1f} |
| portable (pinned) | {pinned:.1f} |

**Portable / own: {pinned / native:.2f}**: the price of `dvc.lock` and `checkpoints/` staying
the same on every x86-64 machine.
"""
    write_section("Portable CPU kernels (tiny training)", body)


if __name__ == "__main__":
    main()
