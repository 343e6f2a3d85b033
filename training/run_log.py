"""Rank 0's MLflow logging during training, which never stops training for the tracking server.

MLflow's client retries an unreachable server for minutes, silently. Here every call is
bounded by `training.tracking_timeout_s` (no retries), the first failure warns naming the
tracking URI, metrics are buffered and flushed once the server answers again, and other calls
(evaluation tables, artifacts, registration) are recorded as not done. At the end, what could
not be logged goes to `unlogged.json` in the output folder and one line says how to re-log it
(`cameo relog`). Checkpoints never wait on the server: they are written by the loop, not here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

UNLOGGED_FILE = "unlogged.json"


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or failing tracking server raises (not a bug of ours)."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, requests.exceptions.RequestException, ConnectionError, TimeoutError)


def bound_tracking_calls(timeout_s: int) -> None:
    """Make every MLflow HTTP call of this process fail after `timeout_s` instead of retrying
    for minutes (MLflow reads these per request)."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


class RunLog:
    """The training run's MLflow calls, tolerant of a tracking server that goes away."""

    def __init__(
        self, run_id: str, tracking_uri: str, retry_after_s: float, say: Callable[[str], None]
    ) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.retry_after_s = retry_after_s
        self.say = say
        self.pending: list[tuple[str, float, int, int]] = []  # key, value, step, timestamp ms
        self.not_done: list[str] = []
        self.down_since: float | None = None
        self.last_try = 0.0

    def _reachable_now(self) -> bool:
        """False while the server is down and the retry interval has not passed."""
        return self.down_since is None or time.monotonic() - self.last_try >= self.retry_after_s

    def _failed(self, error: Exception) -> None:
        self.last_try = time.monotonic()
        if self.down_since is None:
            self.down_since = self.last_try
            cause = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            self.say(
                f"warning: MLflow at {self.tracking_uri} is not answering ({cause}); training "
                "goes on, metrics are kept and logged when it is back"
            )

    def _flush(self, now: bool = False) -> bool:
        """Log every buffered metric; True when nothing is left. While the server is down it
        is tried again once the retry interval has passed, or `now`."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        if not self.pending:
            return True
        if not now and not self._reachable_now():
            return False
        try:
            client = MlflowClient()
            for start in range(0, len(self.pending), 1000):  # MLflow's batch limit
                batch = self.pending[start : start + 1000]
                client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, s, t in batch])
        except tracking_errors() as error:
            self._failed(error)
            return False
        if self.down_since is not None:
            self.say(
                f"MLflow at {self.tracking_uri} answers again: {len(self.pending)} values logged"
            )
            self.down_since = None
        self.pending = []
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [(key, float(value), step, stamp) for key, value in metrics.items()]
        self._flush()

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` (an MLflow call that logs `what`), or None, recorded as not
        done, while the server does not answer. A call always tries the server (calls are few,
        unlike the per-step metrics the retry interval spaces out): a server back within the
        interval gets the evaluation, the checkpoint and the registration."""
        if self._flush(now=True):
            try:
                return fn(*args, **kwargs)
            except tracking_errors() as error:
                self._failed(error)
        self.not_done.append(what)
        return None

    def finish(self, output_dir: Path) -> Path | None:
        """Flush what is left; if the server still does not answer, write what was not logged
        to `unlogged.json` and say so in one line. Returns that file, or None."""
        if self._flush(now=True) and not self.not_done:  # one last try, whatever the interval
            return None
        path = output_dir / UNLOGGED_FILE
        record = {
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "metrics": [
                {"key": k, "value": v, "step": s, "timestamp": t} for k, v, s, t in self.pending
            ],
            "not_done": self.not_done,
        }
        path.write_text(json.dumps(record, indent=1))
        missing = [f"{len(self.pending)} metric values"] * bool(self.pending) + self.not_done
        self.say(
            f"MLflow at {self.tracking_uri} did not answer: {', '.join(missing)} of run "
            f"{self.run_id} not logged; re-log with `cameo relog {path}` once it is back"
        )
        return path


def relog(path: Path, output: Callable[[str], None] = print) -> int:
    """Log the metrics `unlogged.json` kept into its run, and its checkpoint's artifacts where
    they were not logged; returns the number of metric values logged."""
    import mlflow
    from mlflow.entities import Metric

    record = json.loads(path.read_text())
    client = mlflow.MlflowClient()
    metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in record["metrics"]]
    for start in range(0, len(metrics), 1000):
        client.log_batch(record["run_id"], metrics=metrics[start : start + 1000])
    final = path.parent / "final"
    if "checkpoint artifacts" in record["not_done"] and final.is_dir():
        client.log_artifacts(record["run_id"], str(final), artifact_path="checkpoint")
        output(f"logged {final} into run {record['run_id']}")
    if "model registration" in record["not_done"]:
        output(f"register the model with: cameo model log --checkpoint {final}")
    path.unlink()
    return len(metrics)


def say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
