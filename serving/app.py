"""The scoring server: MLflow's scoring app for one pyfunc model, with cameo's /invocations and a
/version naming the model it serves.

`python -m serving.app --model URI` does what `mlflow models serve --env-manager local` does:
downloads the model once and starts uvicorn with N workers on MLflow's scoring app
(`mlflow.pyfunc.scoring_server.init`: /ping, /health, the request formats and parsers). It
differs in three ways:

- `/invocations` is `serving.endpoint`'s: a bounded queue per worker (503 with Retry-After
  beyond it), unknown keys refused, one-line error messages, a timeout that stops the work,
  one log line per request. MLflow's own timeout stays behind it as a backstop, a little later;
- `/version` answers JSON naming the registered model and version (an alias is resolved when
  the server starts), the MLflow run and logged model, MLflow's version, the model's profile
  and its inference params with their defaults and ranges (`cameo studio` shows them); every
  response row carries `model_version` (e.g. `cameo-inpaint/3`), so that a saved picture can be
  traced back;
- it prints what it serves and where, then one line per worker when it is ready, then one line
  per request; uvicorn's own lines only from warnings up.

`cameo serve`, `cameo serve-check`, the tests and the Kubernetes Deployment all start it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
from dataclasses import asdict
from http import HTTPStatus

import click
from fastapi import Request  # at module level: FastAPI resolves the route's annotations here

from serving.params import ServingParams
from serving.served import (
    MODEL_PATH_ENV,
    SERVED_MODEL_ENV,
    SERVER_LIMITS_ENV,
    SERVING_TOKEN_ENV,
    ServedModel,
    ServerLimits,
    resolve_model,
)

# MLflow's own request timeout, behind serving.endpoint's: it answers only if ours failed to.
MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
BACKSTOP_S = 30
_DEFAULTS = ServingParams()

log = logging.getLogger("serving")


def _log_to_stderr() -> None:
    """The `serving` logger's lines (readiness, one per request) on stderr, whatever uvicorn's
    log level."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def create_app():
    """The app each uvicorn worker builds: the model at $CAMEO_MODEL_PATH behind MLflow's
    scoring app, with cameo's /invocations and /version."""
    import mlflow
    from fastapi.responses import JSONResponse
    from mlflow.pyfunc import scoring_server
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from serving.endpoint import BEARER_CHALLENGE, UNAUTHORIZED, Invocations, authorized
    from training.tracking import load_pyfunc

    _log_to_stderr()
    served = ServedModel(**json.loads(os.environ[SERVED_MODEL_ENV]))
    limits = ServerLimits(**json.loads(os.environ[SERVER_LIMITS_ENV]))
    # The perception libraries print each model file they load (rtmlib): not the server's news.
    with contextlib.redirect_stdout(io.StringIO()):
        model = load_pyfunc(os.environ[MODEL_PATH_ENV])
    token = os.environ.get(SERVING_TOKEN_ENV) or None
    app = scoring_server.init(model)
    Invocations(model, limits, token).add_to(app)
    replaced = ("/version", "/ping", "/health")
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") not in replaced]

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> JSONResponse:
        return JSONResponse({"status": "ok"})  # MLflow's answers "\n", labelled JSON

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """Routing errors (an unknown path, GET /invocations) in the shape of every other
        error: an MLflow error code and a message saying what to send instead."""
        message = f"{request.method} {request.url.path}: {error.detail}"
        allowed = {k.lower(): v for k, v in (error.headers or {}).items()}.get("allow")
        if allowed:
            message += f"; this path answers {allowed}"
            if request.url.path == "/invocations":
                message += " with a JSON body in MLflow's scoring format"
        body = {"error_code": HTTPStatus(error.status_code).name, "message": message}
        return JSONResponse(body, error.status_code, error.headers)

    @app.get("/version")
    async def version(request: Request) -> JSONResponse:
        if not authorized(request, token):
            return JSONResponse({"message": UNAUTHORIZED}, 401, BEARER_CHALLENGE)
        return JSONResponse(
            {
                **asdict(served),
                "model_version": served.label,
                "mlflow": mlflow.__version__,
                **model.unwrap_python_model().describe(),
            }
        )

    log.info("worker %d ready", os.getpid())
    return app


def serve(model_uri: str, host: str, port: int, workers: int, limits: ServerLimits) -> None:
    """Check, resolve and download the model, then run uvicorn in this process (so that the PID
    a caller holds is the server's, and the libraries imported here are not imported again; a
    second worker and more are uvicorn's own processes)."""
    import mlflow
    import uvicorn

    from serving.artifacts import check_model_artifacts
    from training.tracking import configure_tracking

    configure_tracking()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no download bars in the log
    check_model_artifacts(model_uri)  # a gone or partial version: one line, not uvicorn's trace
    served = resolve_model(model_uri)
    os.environ[MODEL_PATH_ENV] = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    os.environ[SERVED_MODEL_ENV] = json.dumps(asdict(served))
    os.environ[SERVER_LIMITS_ENV] = json.dumps(asdict(limits))
    os.environ[MLFLOW_TIMEOUT_ENV] = str(round(limits.timeout_s) + BACKSTOP_S)
    token = "bearer token required" if os.environ.get(SERVING_TOKEN_ENV) else "no token"
    print(
        f"serving {served.label} ({model_uri}) at http://{host}:{port}: {workers} worker(s), "
        f"each computing one request with up to {limits.max_waiting} waiting; timeout "
        f"{limits.timeout_s:g} s; bodies up to {limits.max_request_mb} MB; {token}",
        flush=True,
    )
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,  # serving.endpoint logs requests
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_uri", required=True, help="model URI, e.g. models:/name@alias")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=_DEFAULTS.timeout_s,
    show_default=True,
    help="request timeout, seconds",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_DEFAULTS.workers,
    show_default=True,
    help="uvicorn workers (one per GPU)",
)
@click.option(
    "--max-waiting",
    type=click.IntRange(min=0),
    default=_DEFAULTS.max_waiting,
    show_default=True,
    help="requests a worker holds waiting behind the one it computes; more get 503",
)
@click.option(
    "--max-request-mb",
    type=click.IntRange(min=1),
    default=_DEFAULTS.max_request_mb,
    show_default=True,
    help="larger request bodies get 413 before they are read",
)
def main(
    model_uri: str,
    host: str,
    port: int,
    timeout: int,
    workers: int,
    max_waiting: int,
    max_request_mb: int,
) -> None:
    """Serve a cameo-inpaint model over HTTP (MLflow's scoring protocol). With
    $CAMEO_SERVING_TOKEN set, /invocations and /version answer only requests that send it as
    `Authorization: Bearer <token>`; /ping and /health stay open for probes."""
    # Before torch is imported, whose OpenMP reads it once: its threads spin between operations
    # by default, and on cores that other processes share a 640x360 tiny request then took 24 s
    # on two threads instead of 3.5 s.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import mlflow

    from serving.artifacts import ModelArtifactsError

    try:
        serve(model_uri, host, port, workers, ServerLimits(timeout, max_waiting, max_request_mb))
    except (mlflow.MlflowException, OSError, ModelArtifactsError) as e:  # one line
        sys.exit(f"error: cannot serve {model_uri}: {' '.join(str(e).split())}")


if __name__ == "__main__":
    main(prog_name="python -m serving.app")
