"""The `cameo` commands end to end: model log / list / promote / roll back, inpaint over HTTP
and in-process, and serve-check (what `make demo` ends with)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import psutil
import pytest
from click.testing import CliRunner
from conftest import retrained

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


def test_model_log_promote_and_roll_back(tracking, logged, checkpoint, tmp_path):
    before = champion()
    changed = retrained(checkpoint, tmp_path / "retrained")
    output = run("model", "log", "--checkpoint", changed, "--profile", "tiny")
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
    assert "character 1: " in http and "when painted" in http and "grid.png" in http
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


def _demo_dataset(root: Path, scene) -> None:
    """A dataset laid out as `make demo` leaves it: one triplet (small here)."""
    import pandas as pd

    base, mask, reference, prompt = scene
    folder = root / "triplets" / "demo-c0001"
    folder.mkdir(parents=True)
    for name, image in (("target", base), ("target_mask", mask), ("reference", reference)):
        image.save(folder / f"{name}.png")
    row = {name: f"demo-c0001/{name}.png" for name in ("target", "target_mask", "reference")}
    manifest = pd.DataFrame([{"triplet_id": "demo-c0001", **row, "prompt": prompt}])
    manifest.to_parquet(root / "triplets" / "manifest.parquet")


def test_the_readme_request_example_works_as_written(server, scene, tmp_path):
    """docs/serving.md's request example, run by bash as written (only the URL is the test
    server's), in a checkout where `make demo` built the dataset."""
    from serving.client import triplet_inputs

    page = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    section = page[: page.index("### Lineage")]
    [example] = [b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "curl" in b]
    _demo_dataset(tmp_path / "data", scene)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", "-e", "-c", example.replace("http://127.0.0.1:5000", server.url)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"wrote out.png \(\d+\.\d s, cameo-inpaint/\d+\)", result.stdout)
    assert PIL.Image.open(tmp_path / "out.png").size == scene[0].size
    # serve-check sends the same triplet, scaled down to --max-side.
    base, mask, _, _ = triplet_inputs(tmp_path / "data", max_side=32)
    assert base.size == mask.size == (32, 32)


@pytest.mark.slow
def test_serve_check_serves_calls_and_stops(tracking, logged, tmp_path):
    output = run("serve-check", "--data", tmp_path, "--steps", 2)
    assert "request: demo inputs" in output
    pid = int(re.search(r"server pid (\d+) answers /ping", output).group(1))
    assert f"server stopped (pid {pid})" in output
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert PIL.Image.open(tmp_path / "serving" / "output.png").size == (64, 64)
    assert f"wrote {tmp_path / 'serving' / 'grid.png'}" in output
    # The server's log stays beside the result, named when the server starts.
    log = tmp_path / "serving" / "server.log"
    assert f"(log: {log})" in output and " ready" in log.read_text()
