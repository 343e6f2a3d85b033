"""The scoring server (`serving.app`) as a managed process: start on a port, wait for /ping,
stop by PID.

`cameo serve` execs the same command in the foreground; `ModelServer` runs it in the
background for `cameo serve-check`, the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from serving.params import ServingParams


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_command(
    model_uri: str, host: str, port: int, timeout_s: int, workers: int, max_waiting: int
) -> list[str]:
    """The scoring server's command line (`serving.app`): the request timeout, the workers (one
    per GPU) and the requests each holds waiting, from params.yaml's `serving` section."""
    return [
        sys.executable,
        "-m",
        "serving.app",
        "--model",
        model_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--timeout",
        str(timeout_s),
        "--workers",
        str(workers),
        "--max-waiting",
        str(max_waiting),
    ]


def serve_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with this interpreter's bin first (the server's tools are this venv's),
    telemetry off, plus `extra`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra or {})
    return env


class ServerStartError(RuntimeError):
    """The server exited, or did not answer /ping in time: its last log line, and the log."""


class ModelServer:
    """A running scoring server in its own process group, stopped with the group."""

    def __init__(
        self,
        model_uri: str,
        *,
        settings: ServingParams | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`settings`: the `serving` section whose timeout, workers and queue the server gets
        (default: params.yaml's defaults)."""
        settings = settings or ServingParams()
        self.model_uri = model_uri
        self.host = host
        self.port = port or free_port(host)
        self.command = serve_command(
            model_uri,
            host,
            self.port,
            settings.timeout_s,
            settings.workers,
            settings.max_waiting,
        )
        self._env = serve_env(env)
        fd, log = tempfile.mkstemp(prefix="cameo-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, wait_s: float = 180.0) -> ModelServer:
        """Start the server and return once /ping answers 200 (loading the model included)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends uvicorn with it
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the model server exited with {self.process.returncode}: "
                    f"{self.log_tail(1)} (log: {self.log_path})"
                )
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerStartError(
            f"no answer to /ping within {wait_s} s: {self.log_tail(1)} (log: {self.log_path})"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group (uvicorn and its workers), SIGKILL what is left of it
        after `grace_s`."""
        if self.process is None:
            return
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader, or the group never looks empty
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
