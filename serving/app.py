"""The scoring server: MLflow's own app for one pyfunc model, naming the model it serves.

`python -m serving.app --model URI` does what `mlflow models serve --env-manager local` does:
downloads the model once and starts uvicorn with N workers on MLflow's scoring app
(`mlflow.pyfunc.scoring_server.init`: /ping, /health, /invocations, every request format, the
request timeout). Two things differ, so that a picture a user saved can be traced back:

- `/version` answers JSON naming the registered model and version (an alias is resolved when
  the server starts), the MLflow run and logged model, and MLflow's version;
- every response row carries `model_version` (e.g. `cameo-inpaint/3`).

`cameo serve`, `cameo serve-check`, the tests and the Kubernetes Deployment all start it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

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


def create_app():
    """The app each uvicorn worker builds: the model at $CAMEO_MODEL_PATH behind MLflow's
    scoring app, with /version replaced by the served model's identity."""
    import mlflow
    from fastapi.responses import JSONResponse
    from mlflow.pyfunc import scoring_server

    served = ServedModel(**json.loads(os.environ[SERVED_MODEL_ENV]))
    app = scoring_server.init(mlflow.pyfunc.load_model(os.environ[MODEL_PATH_ENV]))
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/version"]

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(
            {**asdict(served), "model_version": served.label, "mlflow": mlflow.__version__}
        )

    return app


def serve(model_uri: str, host: str, port: int, timeout_s: int, workers: int) -> None:
    """Resolve and download the model, then replace this process with uvicorn (so that the
    PID a caller holds is the server's)."""
    import mlflow

    from training.tracking import configure_tracking

    configure_tracking()
    served = resolve_model(model_uri)
    path = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    env = dict(os.environ)
    env[MODEL_PATH_ENV] = path
    env[SERVED_MODEL_ENV] = json.dumps(asdict(served))
    env[TIMEOUT_ENV] = str(timeout_s)
    print(f"serving {served.label} ({model_uri}) at http://{host}:{port}", flush=True)
    uvicorn = str(Path(sys.executable).parent / "uvicorn")
    command = [uvicorn, "--factory", "serving.app:create_app", "--host", host]
    command += ["--port", str(port), "--workers", str(workers)]
    os.execve(uvicorn, command, env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serving.app",
        description="Serve a cameo-inpaint model over HTTP (MLflow's scoring protocol).",
    )
    parser.add_argument("--model", required=True, help="model URI, e.g. models:/name@alias")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--timeout", type=int, default=60, help="request timeout, seconds")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (one per GPU)")
    args = parser.parse_args(argv)
    import mlflow

    try:
        serve(args.model, args.host, args.port, args.timeout, args.workers)
    except (mlflow.MlflowException, OSError) as e:  # unknown model or alias: one line
        sys.exit(f"error: cannot serve {args.model}: {' '.join(str(e).split())}")


if __name__ == "__main__":
    main()
