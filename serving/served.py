"""What a scoring server serves, the environment it hands its workers, and the request a worker
is computing: the model and the scoring app read these, the server (`serving.app`) sets them."""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field

# The downloaded model, what it is and the server's limits: set by `serving.app.serve` for the
# uvicorn workers it starts.
MODEL_PATH_ENV = "CAMEO_MODEL_PATH"
SERVED_MODEL_ENV = "CAMEO_SERVED_MODEL"
SERVER_LIMITS_ENV = "CAMEO_SERVER_LIMITS"
# The bearer token clients must send, when set (in Kubernetes, from the Secret
# cameo-serving-token); the server and `serving.client` read it.
SERVING_TOKEN_ENV = "CAMEO_SERVING_TOKEN"


@dataclass(frozen=True)
class ServedModel:
    """What a server serves: the URI asked for and what it resolved to."""

    model_uri: str
    name: str | None  # the registered model, for models:/<name>/<version> and @alias URIs
    version: str | None
    run_id: str | None
    model_id: str | None

    @property
    def label(self) -> str:
        """`cameo-inpaint/3`, else the logged model's id, else the URI."""
        if self.name and self.version:
            return f"{self.name}/{self.version}"
        return self.model_id or self.model_uri


@dataclass(frozen=True)
class ServerLimits:
    """How much one worker takes on: the request timeout (`serving.timeout_s`), how many
    requests may wait behind the one it computes (`serving.max_waiting`), and the largest body
    it reads (`serving.max_request_mb`)."""

    timeout_s: float
    max_waiting: int
    max_request_mb: int

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 1_000_000


class RequestCancelled(Exception):
    """The request the model is computing was timed out or abandoned by its client."""


@dataclass
class ServedRequest:
    """One request a worker computes. The endpoint cancels it (timeout, client gone); the model
    checks it between its stages and between the modules of its networks
    (`serving.model.RequestStop`), so abandoned work stops between two operations."""

    id: str
    deadline: float  # time.monotonic() after which nobody waits for the answer
    steps: int = 0  # denoising steps done, for the request's log line
    reason: str | None = None  # why it was cancelled
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self, reason: str) -> None:
        if not self._cancelled.is_set():
            self.reason = reason
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def should_stop(self) -> bool:
        """Whether it is cancelled; past its deadline it is cancelled now, as a timeout."""
        if not self._cancelled.is_set() and time.monotonic() > self.deadline:
            self.cancel("timeout")
        return self._cancelled.is_set()

    def check(self) -> None:
        """Raise RequestCancelled when cancelled or past the deadline."""
        if self.should_stop():
            raise RequestCancelled(self.reason)


# The request the current thread computes; None outside the scoring server (in-process predict).
# MLflow's `PyFuncModel.predict` carries only data and params, so this is how the request
# reaches the model's `predict`, which hands it on explicitly.
CURRENT_REQUEST: ContextVar[ServedRequest | None] = ContextVar("cameo_request", default=None)


def resolve_model(model_uri: str) -> ServedModel:
    """The registered version behind `model_uri` (aliases resolved now: moving the alias later
    does not change what this server serves), with its run and logged model."""
    import mlflow

    from training.tracking import registered_version

    # models:/<model id>, runs:/ and paths name no registered version: the label is the id.
    registered = registered_version(model_uri)
    name, version = (registered.name, str(registered.version)) if registered else (None, None)
    info = mlflow.models.get_model_info(model_uri)
    return ServedModel(model_uri, name, version, info.run_id, info.model_id)
