"""The `cameo` commands end to end: model log / list / promote / roll back, inpaint over HTTP
and in-process, and serve-check (what `make demo` ends with)."""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
import psutil
import pytest
from click.testing import CliRunner

from orchestration.cli.main import main
from training.tracking import CHAMPION, REGISTERED_MODEL


def run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def champion() -> str:
    import mlflow

    client = mlflow.MlflowClient()
    return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)


def test_model_log_promote_and_roll_back(tracking, logged, checkpoint):
    before = champion()
    output = run("model", "log", "--checkpoint", checkpoint, "--profile", "tiny")
    version = re.search(r"registered cameo-inpaint version (\d+)", output).group(1)
    assert version != before
    listing = run("model", "list")
    assert f"version {version}  " in listing and f"version {before} @{CHAMPION}" in listing
    promoted = run("model", "promote", version)
    assert f"version {before} -> {version}" in promoted and champion() == version
    rollback = re.search(r"roll back with: (cameo model promote \d+ --alias champion)", promoted)
    run(*rollback.group(1).split()[1:])
    assert champion() == before


@pytest.fixture
def files(tmp_path, scene):
    base, mask, reference, prompt = scene
    paths = {name: tmp_path / f"{name}.png" for name in ("base", "mask", "reference")}
    for name, image in zip(paths, (base, mask, reference), strict=True):
        image.save(paths[name])
    return paths, prompt


def test_inpaint_over_http_and_in_process_agree(server, logged, files, tmp_path):
    paths, prompt = files
    inputs = ["--base", paths["base"], "--mask", paths["mask"], "--reference", paths["reference"]]
    common = [*inputs, "--prompt", prompt, "--steps", 2, "--seed", 3]
    http = run(
        "inpaint",
        *common,
        "--url",
        server.url,
        "--out",
        tmp_path / "http.png",
        "--grid",
        tmp_path / "grid.png",
    )
    assert "identity score" in http and "grid.png" in http
    run("inpaint", *common, "--model", logged.model_uri, "--out", tmp_path / "local.png")
    over_http = np.asarray(PIL.Image.open(tmp_path / "http.png"))
    in_process = np.asarray(PIL.Image.open(tmp_path / "local.png"))
    assert over_http.shape == (64, 64, 3) and np.array_equal(over_http, in_process)
    grid = PIL.Image.open(tmp_path / "grid.png")
    assert grid.width > 5 * grid.height / 2  # five panels side by side over a caption

    refused = CliRunner().invoke(
        main, ["inpaint", *map(str, common), "--url", server.url, "--face-scale", "5"]
    )
    assert refused.exit_code == 1
    assert "HTTP 400: params.face_scale: 5.0 is above the maximum 2.0" in refused.output


@pytest.mark.slow
def test_serve_check_serves_calls_and_stops(tracking, logged, tmp_path):
    output = run("serve-check", "--data", tmp_path, "--steps", 2)
    assert "request: demo inputs" in output
    pid = int(re.search(r"server pid (\d+) answers /ping", output).group(1))
    assert f"server stopped (pid {pid})" in output
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert PIL.Image.open(tmp_path / "serving" / "output.png").size == (64, 64)
    assert f"wrote {tmp_path / 'serving' / 'grid.png'}" in output
