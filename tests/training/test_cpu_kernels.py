"""Bit-identical tiny training on every x86-64 CPU, proven on one machine: ATen's kernel choice
is what differs between CPUs (`ATEN_CPU_CAPABILITY` makes this machine pick as an AVX2-only or
a baseline CPU would); with `training.portable_cpu_kernels` every choice gives the same bytes,
without it they differ (so the test can fail)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_training_train import REPO, _env

FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
CAPABILITIES = ["default"] + [
    c for c, flag in (("avx2", "avx2"), ("avx512", "avx512f")) if flag in FLAGS
]


def trained_bytes(triplets_root: Path, tmp_path: Path, capability: str, portable: bool) -> str:
    """The sha256 of a 2-step tiny run's trained weights, trained as a CPU of `capability`."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"].update(
        portable_cpu_kernels=portable, features=False, validate_every=100, validation_samples=0
    )
    name = f"{capability}-{portable}"
    params = tmp_path / f"{name}.yaml"
    params.write_text(yaml.safe_dump(values))
    out = tmp_path / name
    command = [
        sys.executable, "-m", "orchestration.cli.train", "--params", str(params), "--steps", "2",
        "--data", str(triplets_root), "--unlocked", "--no-progress", "--no-register",
        "--output-dir", str(out),
    ]  # fmt: skip
    env = {
        **_env(triplets_root, tmp_path),
        "ATEN_CPU_CAPABILITY": capability,
        "MLFLOW_TRACKING_URI": f"sqlite:///{out}.db",  # a store per run: they run side by side
    }
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    digest = hashlib.sha256()
    for path in sorted((out / "final").rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.skipif(len(CAPABILITIES) < 2, reason="this CPU offers only ATen's default kernels")
def test_portable_kernels_train_the_same_bytes_on_every_cpu(triplets_root, tmp_path):
    """Five runs: every capability portable, the default and the widest native; two at a
    time (each is one thread)."""
    runs = [(c, True) for c in CAPABILITIES] + [("default", False), (CAPABILITIES[-1], False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        trained = pool.map(lambda run: trained_bytes(triplets_root, tmp_path, *run), runs)
        digests = dict(zip(runs, trained, strict=True))
    portable = {c: digest for (c, kernels), digest in digests.items() if kernels}
    assert len(set(portable.values())) == 1, portable
    native = {c: digest for (c, kernels), digest in digests.items() if not kernels}
    assert len(set(native.values())) == 2, "the CPUs' own kernels agree here: nothing is shown"
