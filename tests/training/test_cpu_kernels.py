"""Bit-identical tiny training on every x86-64 CPU.

On this machine: ATen's kernel choice is what differs between CPUs (`ATEN_CPU_CAPABILITY`
makes this machine pick as a baseline or an AVX2 CPU would): without pinning, the baseline's
and the widest kernels train different bytes (so the test can fail); with
`training.portable_cpu_kernels` a run that asks for the widest kernels trains the bytes
committed in `portable_weights.json`, and no oneDNN kernel runs (oneDNN also sizes its blocks
from the cache). Across machines: the portable run compares its first step, module by module,
with the digests committed in `forward_digests.json`, and its trained weights with
`portable_weights.json` (both recorded on the CPU they name); on another CPU a difference
fails here, naming the first module whose output differs. Record them anew after a change of
the tiny model or the test triplets with CAMEO_RECORD_FORWARD_DIGESTS=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_training_train import REPO, _env

from core.io import write_json
from tests.conftest import tracking_store
from tests.triplets import write_triplets
from training.forward_digests import cpu_model

FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
CAPABILITIES = ["default"] + [
    c for c, flag in (("avx2", "avx2"), ("avx512", "avx512f")) if flag in FLAGS
]
REFERENCE = Path(__file__).with_name("forward_digests.json")
REFERENCE_WEIGHTS = Path(__file__).with_name("portable_weights.json")
RECORD = os.environ.get("CAMEO_RECORD_FORWARD_DIGESTS") == "1"


def trained_bytes(triplets_root: Path, tmp_path: Path, capability: str, portable: bool) -> str:
    """The sha256 of a 2-step tiny run's trained weights, trained as a CPU of `capability`;
    a portable run's first step is compared with (or recorded as) the reference digests."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    # The encoders run inside the portable process (stored features would be this one's).
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
    if portable:
        command += [f"--{'record' if RECORD else 'compare'}-forward-digests", str(REFERENCE)]
    env = {
        **_env(triplets_root, tmp_path),
        "ATEN_CPU_CAPABILITY": capability,
        "MLFLOW_TRACKING_URI": tracking_store(out),  # a store per run: they run side by side
    }
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    digest = hashlib.sha256()
    for path in sorted((out / "final").rglob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
@pytest.mark.skipif(len(CAPABILITIES) < 2, reason="this CPU offers only ATen's default kernels")
def test_portable_kernels_train_the_same_bytes_on_every_cpu(tmp_path):
    """Three runs, two at a time (each is one thread): portable asking for the widest kernels,
    native at the default and at the widest."""
    triplets_root = write_triplets(tmp_path / "data")
    widest = CAPABILITIES[-1]
    runs = [(widest, True), ("default", False), (widest, False)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        portable, *native = pool.map(lambda run: trained_bytes(triplets_root, tmp_path, *run), runs)
    if RECORD:
        write_json({"cpu": cpu_model(), "sha256": portable}, REFERENCE_WEIGHTS)
    reference = json.loads(REFERENCE_WEIGHTS.read_text())
    assert portable == reference["sha256"], (
        f"the portable run trained other weights than on {reference['cpu']} ({cpu_model()} here)"
    )
    assert len(set(native)) == 2, "the CPUs' own kernels agree here: nothing is shown"


def onednn_primitives_executed(capfd: pytest.CaptureFixture) -> list[str]:
    """oneDNN's verbose lines (one per primitive it executes) of one forward and backward
    pass of the tiny denoiser and a VAE encoding, in this process."""
    import torch

    from training.model import TINY, build_components, predict_noise

    components = build_components(TINY, seed=0)
    noise = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=noise)

    time_ids = torch.tensor([[64.0, 96, 0, 0, 64, 96]] * 2)
    inputs = (  # latents of a 32x48 image (the VAE downsamples by 8), its pose drawing
        randn(2, 4, 4, 6), torch.tensor([10, 500]), (randn(2, 1, 4, 6) > 0).float(),
        randn(2, 4, 4, 6), randn(2, 154, 64), randn(2, 32), time_ids,
        randn(2, 512), randn(2, 17, 32), torch.rand(2, 3, 32, 48, generator=noise),
    )  # fmt: skip
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        predict_noise(components["unet"], components["controlnet"], *inputs).sum().backward()
        components["vae"].encode(torch.rand(1, 3, 32, 32))
    return [line for line in capfd.readouterr().out.splitlines() if ",primitive,exec," in line]


def test_portable_kernels_run_no_onednn_primitive(capfd):
    """Portable (what `pin_cpu_kernels` sets once its variables are set): oneDNN executes
    nothing; native (the control): it runs the convolutions. The flags are this process's
    again afterwards."""
    import torch

    from training.cpu_kernels import route_around_onednn

    onednn = torch.backends.mkldnn.enabled
    try:
        with torch.backends.nnpack.flags(enabled=True):
            torch.backends.mkldnn.enabled = True
            native = onednn_primitives_executed(capfd)
            route_around_onednn()
            portable = onednn_primitives_executed(capfd)
    finally:
        torch.backends.mkldnn.enabled = onednn
    assert not portable, portable[:3]
    assert any(",convolution," in line for line in native)
