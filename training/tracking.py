"""MLflow conventions shared by training, serving and the CLI.

The tracking URI comes from `MLFLOW_TRACKING_URI`; without it, a SQLite store `mlruns.db` and
an artifact folder `mlruns/` in the working directory (the repo, like Dagster's `.dagster/`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

EXPERIMENT = "cameo"
REGISTERED_MODEL = "cameo-inpaint"
CHAMPION = "champion"


def configure_tracking(root: str | Path | None = None) -> str:
    """Point MLflow at `$MLFLOW_TRACKING_URI`, else the SQLite store under `root` (default: the
    working directory); make sure the `cameo` experiment exists; return the tracking URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(root or Path.cwd()).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            # Beside the store, not wherever the process happens to run.
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def triplets_dataset(rows: pd.DataFrame, source: Path, name: str, md5: str) -> Any:
    """The MLflow dataset of manifest rows: named, with the DVC md5 of `data/triplets` as its
    digest (MLflow keys datasets by name and digest)."""
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # schema hints, source-type guess
        return mlflow.data.from_pandas(
            rows.drop(columns=["face_embedding"]), source=str(source), name=name, digest=md5
        )


def run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI at `$CAMEO_MLFLOW_UI` (default: `make mlflow-ui`'s)."""
    ui = os.environ.get("CAMEO_MLFLOW_UI", "http://127.0.0.1:5000")
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"


def registered_version(uri: str, client: Any = None) -> Any:
    """The registered `ModelVersion` a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI names
    (an alias resolved now); None for URIs that name no version (`models:/<model id>`,
    `runs:/…`, paths). Raises MLflow's error when the name, version or alias is unknown."""
    import mlflow

    body = uri.removeprefix("models:/") if uri.startswith("models:/") else ""
    client = client or mlflow.MlflowClient()
    if "@" in body:
        name, alias = body.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if body.count("/") == 1:
        name, version = body.split("/")
        return client.get_model_version(name, version)
    return None


def flatten_params(prefix: str, value: Any) -> dict[str, str]:
    """Nested params as MLflow params: `training.cfg_dropout.face` -> "0.05"."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten_params(f"{prefix}.{key}", item))
        return out
    return {prefix: str(value)}
