"""The tracking server goes away during training, for real: `mlflow server` on a free port is
killed mid-run. Training goes on without a stall or a traceback, warns naming the tracking
URI, and either logs everything once the server is back or ends with one line saying what was
not logged and how to re-log it (`cameo relog`).

A killed server refuses connections at once, so the outage is seen within a step whatever the
calls' timeout; the short outage pauses the training (SIGSTOP) while the server restarts, so
the run outlasts the restart on a machine of any speed. One server serves both tests (each
test's run by its name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from test_training_train import REPO, _env

from serving.server import free_port, wait_until_answering
from tests.conftest import tracking_store

# A few losses are logged before the kill; the rest of the run goes on without the server.
pytestmark = pytest.mark.slow
OUTAGE_STEPS = 12


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

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory) -> Iterator[TrackingServer]:
    server = TrackingServer(tmp_path_factory.mktemp("tracking-server"))
    yield server
    if server.running():
        server.kill()


@pytest.fixture
def server(module_server: TrackingServer) -> TrackingServer:
    """The module's server, started again if a test before left it killed."""
    if not module_server.running():
        module_server.start()
    return module_server


class TrainingRun:
    """`cameo train` (tiny) logging to `server` as the run `name`; its stderr read as it comes.
    Its 10 s tracking timeout is never what ends a call here (a killed server refuses at
    once); it only keeps a slow answer on a busy machine from counting as an outage."""

    def __init__(self, triplets_root: Path, tmp_path: Path, server: TrackingServer, name: str):
        values = yaml.safe_load((REPO / "params.yaml").read_text())
        values["profiles"]["tiny"]["training"].update(
            tracking_timeout_s=10, checkpoint_every=10, validate_every=1000
        )
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(values))
        command = [
            sys.executable, "-m", "orchestration.cli.train", "--params", str(params),
            "--data", str(triplets_root), "--unlocked", "--no-progress", "--run-name", name,
            "--output-dir", str(tmp_path / "out"), "--steps", str(OUTAGE_STEPS),
        ]  # fmt: skip
        self.env = {**_env(triplets_root, tmp_path), "MLFLOW_TRACKING_URI": server.url}
        self.name, self.server = name, server
        self.process = subprocess.Popen(
            command, env=self.env, cwd=tmp_path, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for_losses(self, count: int) -> str:
        """The run's id once the server holds `count` loss values of it."""
        client = MlflowClient(self.server.url)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and self.process.poll() is None:
            experiment = client.get_experiment_by_name("cameo")
            runs = []
            if experiment:
                runs = client.search_runs(
                    [experiment.experiment_id], f"attributes.run_name = '{self.name}'"
                )
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= count:
                return runs[0].info.run_id
            time.sleep(0.2)
        raise TimeoutError(f"training logged no loss:\n{''.join(self.lines)[-3000:]}")

    def wait_for_line(self, text: str) -> None:
        deadline = time.monotonic() + 120
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None and time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def finish(self) -> str:
        """Its stderr, once it has exited with status 0."""
        self.process.wait(timeout=600)
        self.reader.join(timeout=30)
        err = "".join(self.lines)
        assert self.process.returncode == 0, err
        return err


def loss_steps(server: TrackingServer, run_id: str) -> list[int]:
    history = MlflowClient(server.url).get_metric_history(run_id, "train/loss")
    return sorted(m.step for m in history)


def test_a_long_outage_ends_in_one_line_and_cameo_relog_logs_the_rest(
    triplets_root, tmp_path, server
):
    training = TrainingRun(triplets_root, tmp_path, server, "long-outage")
    run_id = training.wait_for_losses(3)
    server.kill()
    err = training.finish()
    assert "Traceback" not in err
    assert f"warning: MLflow at {server.url} is not answering" in err
    unlogged = tmp_path / "out" / "unlogged.json"
    (last,) = [line for line in err.splitlines() if "did not answer" in line]
    assert "model registration" in last and f"cameo relog {unlogged}" in last
    assert (tmp_path / "out" / "final" / "cameo_checkpoint.json").is_file()

    server.start()
    relogged = subprocess.run(
        [sys.executable, "-m", "orchestration.cli.main", "relog", str(unlogged)],
        env=training.env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert relogged.returncode == 0, relogged.stderr
    assert "cameo model log --checkpoint" in relogged.stdout
    assert loss_steps(server, run_id) == list(range(1, OUTAGE_STEPS + 1))
    artifacts = MlflowClient(server.url).list_artifacts(run_id, "checkpoint")
    assert any(a.path == "checkpoint/pose_identitynet" for a in artifacts)
    assert not unlogged.exists()


def test_a_short_outage_is_logged_when_the_server_is_back(triplets_root, tmp_path, server):
    training = TrainingRun(triplets_root, tmp_path, server, "short-outage")
    run_id = training.wait_for_losses(3)
    server.kill()
    training.wait_for_line(f"warning: MLflow at {server.url} is not answering")
    # The run waits while the server restarts (seconds), then finishes with it back.
    os.kill(training.process.pid, signal.SIGSTOP)
    try:
        server.start()
    finally:
        os.kill(training.process.pid, signal.SIGCONT)
    err = training.finish()
    assert f"MLflow at {server.url} answers again" in err
    assert "did not answer" not in err and not (tmp_path / "out" / "unlogged.json").exists()
    assert loss_steps(server, run_id) == list(range(1, OUTAGE_STEPS + 1))
    versions = MlflowClient(server.url).search_model_versions(
        f"name='cameo-inpaint' and run_id='{run_id}'"
    )
    assert len(versions) == 1
