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
from collections.abc import Callable, Mapping
from pathlib import Path

import requests

from serving.params import ServingParams


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_command(model_uri: str, host: str, port: int, settings: ServingParams) -> list[str]:
    """The scoring server's command line (`serving.app`): the request timeout, the workers (one
    per GPU), the requests each holds waiting and the largest body, from params.yaml's
    `serving` section."""
    return [
        sys.executable, "-m", "serving.app", "--model", model_uri, "--host", host,
        "--port", str(port), "--timeout", str(settings.timeout_s),
        "--workers", str(settings.workers), "--max-waiting", str(settings.max_waiting),
        "--max-request-mb", str(settings.max_request_mb),
    ]  # fmt: skip


def serve_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment with this interpreter's bin first (the server's tools are this venv's),
    telemetry off, plus `extra`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.update(extra or {})
    return env


class ServerStartError(RuntimeError):
    """A server exited, or did not answer in time: its last log line, and the log."""


def wait_until_answering(
    name: str,
    url: str,
    process: subprocess.Popen,
    wait_s: float,
    log: Path | None = None,
    stop: Callable[[], None] | None = None,
) -> None:
    """Return once GET `url` of the server `name` (running in `process`) answers 200. A refused
    connection or a slow answer (a busy machine: the server may still be importing) counts as
    not yet; once `process` exits or `wait_s` passes, `stop()` (what is left of the server),
    then `ServerStartError` with the last line of `log`."""

    def log_line() -> str:
        if log is None or not log.is_file():
            return ""
        lines = log.read_text(errors="replace").splitlines()
        return f": {lines[-1] if lines else '(empty log)'} (log: {log})"

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            failure = f"{name} exited with {process.returncode}"
            break
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=10).status_code == 200:
                return
        time.sleep(0.3)
    else:
        failure = f"{name}: no answer from {url} within {wait_s} s"
    if stop is not None:
        stop()
    raise ServerStartError(f"{failure}{log_line()}")


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
        log_path: Path | None = None,
    ) -> None:
        """`settings`: the `serving` section whose timeout, workers and queue the server gets
        (default: params.yaml's defaults). `log_path`: where the server's output goes, kept;
        without it, a temp file removed when a server that answered stops (a failed start's
        error names its log, which then stays)."""
        settings = settings or ServingParams()
        self.model_uri = model_uri
        self.host = host
        self.port = port or free_port(host)
        self.command = serve_command(model_uri, host, self.port, settings)
        self._env = serve_env(env)
        self._temporary_log = log_path is None
        if log_path is None:
            fd, log = tempfile.mkstemp(prefix="cameo-serve-", suffix=".log")
            os.close(fd)
            log_path = Path(log)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._answered = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        wait_until_answering(
            "the model server", f"{self.url}/ping", self.process, wait_s, self.log_path, self.stop
        )
        self._answered = True
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group (uvicorn and its workers), SIGKILL what is left of it
        after `grace_s`; then remove a temporary log of a server that answered."""
        if self.process is None:
            return
        self._stop_group(grace_s)
        if self._temporary_log and self._answered:
            self.log_path.unlink(missing_ok=True)

    def _stop_group(self, grace_s: float) -> None:
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
