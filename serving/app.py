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

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click

from serving.served import MODEL_PATH_ENV, SERVED_MODEL_ENV, TIMEOUT_ENV, ServedModel


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_uri", required=True, help="model URI, e.g. models:/name@alias")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--timeout", type=int, default=60, show_default=True, help="request timeout, seconds")
@click.option(
    "--workers", type=int, default=1, show_default=True, help="uvicorn workers (one per GPU)"
)
def main(model_uri: str, host: str, port: int, timeout: int, workers: int) -> None:
    """Serve a cameo-inpaint model over HTTP (MLflow's scoring protocol)."""
    import mlflow

    try:
        serve(model_uri, host, port, timeout, workers)
    except (mlflow.MlflowException, OSError) as e:  # unknown model or alias: one line
        sys.exit(f"error: cannot serve {model_uri}: {' '.join(str(e).split())}")


if __name__ == "__main__":
    main(prog_name="python -m serving.app")
