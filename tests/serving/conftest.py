"""Fixtures for the serving tests: a temp MLflow store, a tiny checkpoint logged and promoted
as `cameo-inpaint@champion`, and one real scoring server for the session."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.client import demo_inputs, make_row
from serving.params import ServingParams
from serving.server import ModelServer
from tests.conftest import tracking_store
from training.model import ADAPTER_FILES, TINY, CheckpointInfo, build_components, save_checkpoint

DATASET_MD5 = "0123456789abcdef0123456789abcdef.dir"
# Few steps keep each request well under a second on the tiny model.
FAST = {"num_inference_steps": 2}
LIMITED_TIMEOUT_S = 2  # `limited_server`'s
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_REQUEST_LINE = re.compile(r"request id=(?P<id>\S+) status=(?P<status>\d+) (?P<rest>.*)$")


def request_log(server: ModelServer) -> dict[str, dict[str, str]]:
    """The server's log line of each request, by id: its status and key=value fields."""
    lines = {}
    for line in server.log_path.read_text(errors="replace").splitlines():
        match = _REQUEST_LINE.search(line)
        if match:
            fields = dict(re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|\S+)", match["rest"]))
            lines[match["id"]] = {"status": match["status"], "line": line, **fields}
    return lines


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # shared cores; and CPU results then match the server's


@pytest.fixture(scope="session")
def tracking(tmp_path_factory) -> Iterator[str]:
    """A SQLite tracking store in a temp dir, never the repo's."""
    from training.tracking import configure_tracking

    root = tmp_path_factory.mktemp("mlflow")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_store(root)
    yield configure_tracking(root)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint whose ControlNet outputs are not zero (as after training), so the pose
    changes the image."""
    components = build_components(TINY, seed=0)
    generator = torch.Generator().manual_seed(0)
    controlnet = components["controlnet"]
    with torch.no_grad():
        for block in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            for param in block.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    directory = tmp_path_factory.mktemp("checkpoint")
    info = CheckpointInfo(config="tiny", base_seed=0, step=7, dataset_md5=DATASET_MD5)
    save_checkpoint(components["unet"], components["controlnet"], directory, info)
    (directory / "training_state.pt").write_bytes(b"optimizer state: not for serving")
    return directory


def retrained(checkpoint: Path, target: Path, shift: float = 1.0) -> Path:
    """A copy of the checkpoint whose face adapter weights differ by `shift`, as after more
    training."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, target)
    adapter = target / ADAPTER_FILES["face"]
    save_file({name: tensor + shift for name, tensor in load_file(adapter).items()}, adapter)
    return target


@pytest.fixture(scope="session")
def logged(tracking: str, checkpoint: Path):
    """The checkpoint logged in a run, registered, and promoted to champion."""
    import mlflow

    from serving.registry import log_model, promote

    with mlflow.start_run(run_name="serving-tests"):
        info = log_model(checkpoint, profile="tiny")
    promote(info.registered_model_version)
    return info


@pytest.fixture(scope="session")
def pyfunc_model(logged):
    import mlflow

    return mlflow.pyfunc.load_model(logged.model_uri)


@pytest.fixture(scope="session")
def server(logged) -> Iterator[ModelServer]:
    """The scoring server (`serving.app`) on the champion, on a free port, one torch thread;
    a timeout and a queue no test here reaches."""
    from training.tracking import CHAMPION, REGISTERED_MODEL

    settings = ServingParams(timeout_s=120, max_waiting=16)
    with ModelServer(
        f"models:/{REGISTERED_MODEL}@{CHAMPION}", settings=settings, env=ONE_THREAD
    ) as server:
        yield server


@pytest.fixture(scope="session")
def limited_server(logged) -> Iterator[ModelServer]:
    """A server with a 2 s timeout and one waiting place, for the timeout and load tests: a 64x64
    request at 2 steps takes a fraction of a second, one at 512x512 about a second a step, and
    the first step of one at 768x768 (its VAE encoding and one step: about 5 s) outlasts the
    timeout."""
    settings = ServingParams(timeout_s=LIMITED_TIMEOUT_S, max_waiting=1)
    with ModelServer(logged.model_uri, settings=settings, env=ONE_THREAD) as server:
        yield server


@pytest.fixture(scope="session")
def scene():
    """The demo request's images: 64x64 base and mask, a reference with a detectable face."""
    return demo_inputs()


@pytest.fixture(scope="session")
def good_row(scene) -> dict:
    return make_row(*scene)
