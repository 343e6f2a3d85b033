"""MLflow conventions shared by training, serving and the CLI.

The tracking URI comes from `MLFLOW_TRACKING_URI`; without it, a SQLite store `mlruns.db` and
an artifact folder `mlruns/` in the working directory (the repo, like Dagster's `.dagster/`).

Names in a run: metrics in three groups, each a chart section of the UI: `train/…` (the
optimiser's steps), `val/…` (the validation loss) and `eval/…` (the evaluation's scores); the
validation grids as images `grid/<triplet>`; params `<section>.<key>`, one separator throughout.
A metric that cannot be computed is not logged (NaN hides a chart): the evaluation table says
why.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from training.model.config import ModelConfig
    from training.params import TrainingParams

EXPERIMENT = "cameo"
REGISTERED_MODEL = "cameo-inpaint"
CHAMPION = "champion"
# MLflow's experiment-kind tag: model training, not GenAI (the experiment header's kind).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow 3.17's UI picks its mode for every experiment at once (GenAI unless told), from this
# query parameter or its sidebar switch, not from the tag: links into the UI carry it, so they
# open on the training runs.
TRAINING_MODE = "workflowType=machine_learning"
PARAM_SEPARATOR = "."  # of every run param: `training.learning_rate`, `model.config`


def configure_tracking(root: str | Path | None = None) -> str:
    """Point MLflow at `$MLFLOW_TRACKING_URI`, else the SQLite store under `root` (default: the
    working directory); make sure the `cameo` experiment exists, tagged as model training (also
    one created before the tag); return the tracking URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = Path(root or Path.cwd()).resolve()
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlruns.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            # Beside the store, not wherever the process happens to run.
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    elif not EXPERIMENT_KIND.items() <= experiment.tags.items():
        for key, value in EXPERIMENT_KIND.items():
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
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


# The `training` params logged as MLflow params, what runs are compared by; the rest are in
# TRAINING_CONFIG_FILE. Few: MLflow's image cards list a run's params above the picture, and
# more than six of them (these and `model.config`) push it out of the card.
HEADLINE_PARAMS = ("learning_rate", "max_steps", "batch_size", "mixed_precision", "seed")
TRAINING_CONFIG_FILE = "training_config.json"
REQUIREMENTS_FILE = "requirements.txt"  # where MLflow writes a logged model's requirements


def default_run_name(profile: str, params: TrainingParams, md5: str) -> str:
    """A training run's name when none is given: what it trained, readable in the runs list
    (MLflow's own would be a random `serious-shrew-317`)."""
    return f"{profile} lr {params.learning_rate:g} {params.max_steps} steps data {md5[:8]}"


def log_run_definition(
    params: TrainingParams,
    config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    tags: dict[str, Any],
    splits: dict[str, pd.DataFrame],
    triplets_dir: Path,
    md5: str,
) -> None:
    """What a training run is, logged once at its step 0: the headline `training` params and
    the model config's name as params (what runs are compared by; the UI's image cards list
    them) and all of them as `training_config.json`, the model config, `tags` and the
    optimiser class that ran (not only the one asked for: `use_8bit_adam`) as tags, and the
    training and validation splits as MLflow datasets."""
    import json

    import mlflow

    values = params.model_dump(mode="json")
    mlflow.log_params(flatten_params("training", {key: values[key] for key in HEADLINE_PARAMS}))
    mlflow.log_dict(values, TRAINING_CONFIG_FILE)
    mlflow.log_param("model.config", config.name)
    optimizer_name = f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"
    mlflow.set_tags({**tags, "optimizer.class": optimizer_name})
    mlflow.log_dict(json.loads(config.to_json()), "model_config.json")
    # MLflow keys datasets by (name, digest): the validation split gets a name of its own.
    for context, rows in splits.items():
        name = "triplets" if context == "training" else f"triplets-{context}"
        mlflow.log_input(triplets_dataset(rows, triplets_dir, name, md5), context=context)


def mlflow_ui() -> str:
    """Where users open the MLflow UI: `$CAMEO_MLFLOW_UI`, else the tracking server itself when
    MLFLOW_TRACKING_URI is one (it serves the UI), else `make mlflow-ui`'s address."""
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    served = tracking.rstrip("/") if tracking.startswith(("http://", "https://")) else None
    return os.environ.get("CAMEO_MLFLOW_UI") or served or "http://127.0.0.1:5000"


def experiment_url(experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI (`mlflow_ui`), in model-training mode."""
    return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs?{TRAINING_MODE}"


def run_url(experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in model-training mode."""
    return f"{mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_MODE}"


def model_version_url(name: str, version: str) -> str:
    """A registered model version's page in the MLflow UI."""
    return f"{mlflow_ui()}/#/models/{name}/versions/{version}"


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
    """Nested params as MLflow params, joined by `PARAM_SEPARATOR`:
    `training.cfg_dropout.face` -> "0.05"."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten_params(f"{prefix}{PARAM_SEPARATOR}{key}", item))
        return out
    return {prefix: str(value)}


def _is_installed_cameo(line: str) -> bool:
    """Whether requirement `line` is a model's requirement of cameo (`cameo==<version>+<source
    digest>`, serving.environment) met by this installation's source."""
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    from core.versioning import project_digest

    name, _, version = line.partition("==")
    if canonicalize_name(name.strip()) != "cameo" or not version:
        return False
    try:
        return Version(version.strip()).local == project_digest()
    except InvalidVersion:
        return False


def load_pyfunc(model: str | Path) -> Any:
    """`mlflow.pyfunc.load_model` of a model URI or folder, whose check of the model's
    requirements against this environment is exact for cameo's own: an installation whose
    source digest is the one the model's wheel was built from meets it, whatever version it
    declares (an editable install's carries no digest). Any other mismatch is MLflow's
    warning, as ever."""
    import mlflow
    from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

    if Path(model).is_dir():
        folder = Path(model)
    else:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(model)))
    listed = folder / REQUIREMENTS_FILE
    requirements = listed.read_text().splitlines() if listed.is_file() else []
    warn_dependency_requirement_mismatches(
        [line for line in requirements if not _is_installed_cameo(line)]
    )
    return mlflow.pyfunc.load_model(str(folder), suppress_warnings=True)
