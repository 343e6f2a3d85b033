"""The tracking server goes away during training, for real: `mlflow server` on a free port is
killed mid-run. Training goes on without a stall or a traceback, warns naming the tracking
URI, and either logs everything once the server is back or ends with one line saying what was
not logged and how to re-log it (`cameo relog`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from test_training_train import REPO, _env

from serving.server import free_port, wait_until_answering
from tests.conftest import tracking_store

# The tiny model takes tens of ms a step: a short outage's run outlasts a restart of the
# server; a long outage's needs only to go on after the server is killed.
SHORT_OUTAGE_STEPS = 200
LONG_OUTAGE_STEPS = 60


class TrackingServer:
    """`mlflow server` on a SQLite store and a local artifact folder, killed by its group."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.process = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow = str(Path(sys.executable).parent / "mlflow")
        command = [
            mlflow, "server", "--backend-store-uri", tracking_store(self.root),
            "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until_answering("mlflow server", f"{self.url}/health", self.process, 120)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    server = TrackingServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


def start_training(triplets_root: Path, tmp_path: Path, server: TrackingServer, steps: int):
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"].update(
        tracking_timeout_s=2, checkpoint_every=40, validate_every=1000
    )
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    command = [
        sys.executable, "-m", "orchestration.cli.train", "--params", str(params),
        "--data", str(triplets_root), "--unlocked", "--no-progress",
        "--output-dir", str(tmp_path / "out"), "--steps", str(steps),
    ]  # fmt: skip
    env = {**_env(triplets_root, tmp_path), "MLFLOW_TRACKING_URI": server.url}
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, env


def wait_for_losses(server: TrackingServer, count: int) -> str:
    """The run's id once the server holds `count` loss values of it."""
    client = MlflowClient(server.url)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("cameo")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= count:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise TimeoutError("training logged no loss")


def loss_steps(server: TrackingServer, run_id: str) -> list[int]:
    history = MlflowClient(server.url).get_metric_history(run_id, "train/loss")
    return sorted(m.step for m in history)


def test_a_long_outage_ends_in_one_line_and_cameo_relog_logs_the_rest(
    triplets_root, tmp_path, server
):
    process, env = start_training(triplets_root, tmp_path, server, LONG_OUTAGE_STEPS)
    run_id = wait_for_losses(server, 3)
    server.kill()
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert f"warning: MLflow at {server.url} is not answering" in err
    unlogged = tmp_path / "out" / "unlogged.json"
    (last,) = [line for line in err.splitlines() if "did not answer" in line]
    assert "model registration" in last and f"cameo relog {unlogged}" in last
    assert (tmp_path / "out" / "final" / "cameo_checkpoint.json").is_file()

    server.start()
    relogged = subprocess.run(
        [sys.executable, "-m", "orchestration.cli.main", "relog", str(unlogged)],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert relogged.returncode == 0, relogged.stderr
    assert "cameo model log --checkpoint" in relogged.stdout
    assert loss_steps(server, run_id) == list(range(1, LONG_OUTAGE_STEPS + 1))
    artifacts = MlflowClient(server.url).list_artifacts(run_id, "checkpoint")
    assert any(a.path == "checkpoint/pose_identitynet" for a in artifacts)
    assert not unlogged.exists()


def test_a_short_outage_is_logged_when_the_server_is_back(triplets_root, tmp_path, server):
    process, _ = start_training(triplets_root, tmp_path, server, SHORT_OUTAGE_STEPS)
    run_id = wait_for_losses(server, 3)
    server.kill()
    time.sleep(1)
    server.start()
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert f"warning: MLflow at {server.url} is not answering" in err
    assert f"MLflow at {server.url} answers again" in err
    assert "did not answer" not in err and not (tmp_path / "out" / "unlogged.json").exists()
    assert loss_steps(server, run_id) == list(range(1, SHORT_OUTAGE_STEPS + 1))
    versions = MlflowClient(server.url).search_model_versions("name='cameo-inpaint'")
    assert len(versions) == 1
