"""What a scoring server serves, and the environment it hands its workers: the model and the
scoring app read these, the server (`serving.app`) sets them."""

from __future__ import annotations

from dataclasses import dataclass

# The downloaded model and what it is: set by `main` for the uvicorn workers it starts.
MODEL_PATH_ENV = "CAMEO_MODEL_PATH"
SERVED_MODEL_ENV = "CAMEO_SERVED_MODEL"
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"  # read by MLflow's scoring app


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
