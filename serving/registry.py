"""Logging a checkpoint as the `cameo-inpaint` MLflow model, and moving its `champion` alias.

`log_model` is what training calls at its end (inside its run) and what
`cameo model log --checkpoint DIR` calls for any checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models.model import ModelInfo

from core.versioning import sha256
from serving.artifacts import (
    CHECKPOINT_ARTIFACT,
    MODEL_CODE,
    SETTINGS_METADATA,
    check_model_code,
    checkpoint_files,
    installed_commit,
    locate_model,
)
from serving.client import demo_inputs, make_row
from serving.environment import model_environment
from serving.manifest import record_base_models
from serving.params import ServedSettings
from serving.schema import ServingConfig
from training.model import (
    ADAPTER_FILES,
    BODY_ENCODER_DIR,
    CHECKPOINT_INFO,
    CONTROLNET_DIR,
    SDXL_INPAINT_DIR,
    CheckpointInfo,
)
from training.outputs import FINAL_DIR, RUN_FILE
from training.tracking import CHAMPION, REGISTERED_MODEL

PROFILE_CONFIGS = {"tiny": "tiny", "full": "sdxl"}  # the model config each profile serves
MODEL_NAME = "model"  # the logged model's name inside its run
# The model metadata each registered version is also tagged with (searchable in the registry).
VERSION_TAGS = ("training_run_id", "dataset_md5", "checkpoint_step", "profile", "weights_sha256")
CAMEO_WHEEL = "cameo_wheel"  # the artifact cameo's own wheel is logged as (serving.environment)


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Only what inference reads: a training checkpoint may also hold optimizer state."""
    target.mkdir(parents=True)
    for name in (*ADAPTER_FILES.values(), CHECKPOINT_INFO):
        shutil.copy2(source / name, target / name)
    shutil.copytree(source / CONTROLNET_DIR, target / CONTROLNET_DIR)


def weights_sha256(checkpoint_dir: Path) -> str:
    """One sha256 over the weights inference reads (not `cameo_checkpoint.json`, whose step and
    run differ between copies of the same weights)."""
    digest = hashlib.sha256()
    adapters = [checkpoint_dir / name for name in sorted(ADAPTER_FILES.values())]
    controlnet = sorted(p for p in (checkpoint_dir / CONTROLNET_DIR).rglob("*") if p.is_file())
    for path in [*adapters, *controlnet]:
        digest.update(f"{path.relative_to(checkpoint_dir).as_posix()} {sha256(path)}\n".encode())
    return digest.hexdigest()


def registered_weights(digest: str, name: str = REGISTERED_MODEL) -> Any:
    """The registered version (MLflow's `ModelVersion`) whose weights have the `digest` of
    `weights_sha256`; None when none has."""
    found = mlflow.MlflowClient().search_model_versions(
        f"name = '{name}' and tags.weights_sha256 = '{digest}'"
    )
    return min(found, key=lambda v: int(v.version)) if found else None


def _input_example() -> tuple[pd.DataFrame, dict[str, Any]]:
    """A small request, which MLflow also runs through the logged model to validate it."""
    base, mask, reference, prompt = demo_inputs()
    return pd.DataFrame([make_row(base, mask, reference, prompt)]), {"num_inference_steps": 2}


def training_run(checkpoint_dir: Path, info: CheckpointInfo) -> str | None:
    """The MLflow run that trained a checkpoint: its own record (`checkpoint-<step>/`), else
    the `run.json` training writes beside `final/` (whose files name no run, so that dvc.lock
    reproduces), when it describes the same dataset; None when neither says."""
    if info.run_id:
        return info.run_id
    record = checkpoint_dir.parent / RUN_FILE
    if checkpoint_dir.name == FINAL_DIR and record.is_file():
        run = json.loads(record.read_text())
        if run.get("dataset_md5") == info.dataset_md5:
            return run.get("run_id")
    return None


def log_model(
    checkpoint_dir: str | Path,
    *,
    profile: str,
    models_dir: str | Path | None = None,
    registered_model_name: str | None = REGISTERED_MODEL,
    settings: ServedSettings | None = None,
    weights_digest: str | None = None,
) -> ModelInfo:
    """Log the checkpoint as a pyfunc model into the active MLflow run and register it. The
    model is logged from code (`serving/logged_model.py`), not pickled.

    `settings` (default: params.yaml's defaults) travel with the model, in its metadata
    (`served_settings`), not as the run's params: the `faces`, `poses` and `serving` sections
    and `training.trust_remote_code`. `tiny` models carry every file they need; `full` models
    carry the trained parts and a manifest (sizes, sha256) of the base weights under
    `models_dir` they expect at load. The model's metadata also names the training run and
    the dataset md5 of the checkpoint; the registered version is tagged with both.
    `registered_model_name=None` logs without registering. `weights_digest`: the checkpoint's
    `weights_sha256` where the caller has it already (a `full` model's weights take seconds to
    hash).
    """
    checkpoint_dir = Path(checkpoint_dir)
    info = CheckpointInfo.read(checkpoint_dir)
    if PROFILE_CONFIGS.get(profile) != info.config:
        raise ValueError(
            f"{checkpoint_dir} holds a {info.config!r} checkpoint; the {profile!r} profile serves "
            f"{PROFILE_CONFIGS.get(profile)!r}"
        )
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_model logs into the active MLflow run: call mlflow.start_run()")
    settings = settings or ServedSettings()
    serving = ServingConfig.from_params(settings.serving.model_dump(exclude_none=True))
    served_settings: dict[str, Any] = {
        "profile": profile,
        "faces": settings.faces.model_dump(),
        "poses": settings.poses.model_dump(),
        "serving": serving.to_dict(),
        "trust_remote_code": settings.trust_remote_code,
    }
    if profile == "full":
        from perception.models import models_dir as resolve_models_dir

        names = [SDXL_INPAINT_DIR, BODY_ENCODER_DIR]
        names += [settings.faces.model, settings.poses.model]
        served_settings["base_models"] = record_base_models(resolve_models_dir(models_dir), names)
    training_run_id = training_run(checkpoint_dir, info) or run.info.run_id
    model_metadata = {
        "training_run_id": training_run_id,
        "dataset_md5": info.dataset_md5,
        "checkpoint_step": info.step,
        "model_config": info.config,
        "profile": profile,
        "code_version": installed_commit(),
        "weights_sha256": weights_digest or weights_sha256(checkpoint_dir),
        # Here, not as `model_config`, which MLflow also logs as run params (~30 of them).
        SETTINGS_METADATA: served_settings,
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / CHECKPOINT_ARTIFACT
        _copy_checkpoint(checkpoint_dir, checkpoint)
        model_metadata["checkpoint_files"] = checkpoint_files(checkpoint)
        environment = model_environment()
        if environment.not_installed:
            model_metadata["requirements_not_installed"] = environment.not_installed
        model_info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint), CAMEO_WHEEL: str(environment.wheel)},
            signature=serving.signature(),
            input_example=_input_example(),
            # Given in full: MLflow would otherwise load the model in a subprocess to infer them.
            pip_requirements=environment.requirements,
            metadata=model_metadata,
            registered_model_name=registered_model_name,
        )
    if registered_model_name is not None:
        client = mlflow.MlflowClient()
        version = model_info.registered_model_version
        for key in VERSION_TAGS:
            value = model_metadata[key]
            if value is not None:
                client.set_model_version_tag(registered_model_name, version, key, str(value))
    return model_info


@dataclass(frozen=True)
class ModelVersion:
    version: str
    aliases: tuple[str, ...]
    training_run_id: str | None
    dataset_md5: str | None
    profile: str | None
    created: pd.Timestamp
    logged_as: str  # "code" (models-from-code), "pickle" (before it), or "unknown"


def logged_as(model_uri: str) -> str:
    """How a model's Python object was logged: "code" (models-from-code: loading runs the code
    file), "pickle" (cloudpickled: loading unpickles it, which MLflow allows only while
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION is true, its default), or "unknown" when its MLmodel
    cannot be read."""
    from mlflow.models.model import MODEL_CODE_PATH

    try:
        flavor = mlflow.models.get_model_info(model_uri).flavors["python_function"]
    except (mlflow.MlflowException, OSError, KeyError):
        return "unknown"
    return "code" if MODEL_CODE_PATH in flavor else "pickle"


def model_versions(name: str = REGISTERED_MODEL) -> list[ModelVersion]:
    """Every registered version, newest first, with its aliases, lineage tags and how it was
    logged (reads each version's MLmodel)."""
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return []
    # Searches leave versions' aliases empty; the registered model has them all.
    aliases = client.get_registered_model(name).aliases
    return sorted(
        (
            ModelVersion(
                version=str(v.version),
                aliases=tuple(
                    a for a, version in aliases.items() if str(version) == str(v.version)
                ),
                training_run_id=v.tags.get("training_run_id"),
                dataset_md5=v.tags.get("dataset_md5"),
                profile=v.tags.get("profile"),
                created=pd.Timestamp(v.creation_timestamp, unit="ms"),
                logged_as=logged_as(f"models:/{name}/{v.version}"),
            )
            for v in versions
        ),
        key=lambda v: int(v.version),
        reverse=True,
    )


def promote(version: str | int, alias: str = CHAMPION, name: str = REGISTERED_MODEL) -> str | None:
    """Point `alias` at `version` ("latest": the newest registered); return the version it
    pointed at before (to roll back to). ModelArtifactsError, before the alias moves, for a
    version whose code file is not this installation's."""
    client = mlflow.MlflowClient()
    if version == "latest":
        found = client.search_model_versions(f"name='{name}'")
        if not found:
            raise mlflow.MlflowException(f"no version of {name} is registered: train one first")
        version = max(int(v.version) for v in found)
    client.get_model_version(name, str(version))  # fails with MLflow's message if unknown
    uri = f"models:/{name}/{version}"
    # An alias never points at foreign code.
    check_model_code(mlflow.models.get_model_info(uri), locate_model(uri))
    try:
        previous = str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, str(version))
    return previous
