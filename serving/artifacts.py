"""A logged model's files, checked before anything loads them: `cameo serve`, `serve-check`,
`evaluate` and `inpaint --model` fail in one line that names the model version, its artifact
location and the first missing or short file, instead of a loader's traceback.

`log_model` records the size of every checkpoint file it logs (`checkpoint_files` in the
model's metadata); versions logged before that are checked for the files inference reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mlflow

from serving.model import CHECKPOINT_ARTIFACT
from training.model import ADAPTER_FILES, CHECKPOINT_INFO, CONTROLNET_DIR
from training.tracking import registered_version

MLMODEL = "MLmodel"
# Where MLflow's pyfunc puts an `artifacts={name: path}` entry inside the model's folder.
ARTIFACTS_DIR = "artifacts"
# What inference reads of a checkpoint, for versions whose metadata lists no files.
INFERENCE_FILES = (
    *ADAPTER_FILES.values(),
    CHECKPOINT_INFO,
    f"{CONTROLNET_DIR}/config.json",
    f"{CONTROLNET_DIR}/diffusion_pytorch_model.safetensors",
)


class ModelArtifactsError(Exception):
    """A logged model whose artifacts are gone or incomplete; the message is one line."""


@dataclass(frozen=True)
class ModelLocation:
    label: str  # "cameo-inpaint version 3 (models:/cameo-inpaint@champion)", or the URI
    artifact_uri: str  # the folder holding MLmodel


def checkpoint_files(checkpoint_dir: Path) -> dict[str, int]:
    """Every file of a checkpoint folder, by its path inside it, with its size in bytes."""
    return {
        path.relative_to(checkpoint_dir).as_posix(): path.stat().st_size
        for path in sorted(checkpoint_dir.rglob("*"))
        if path.is_file()
    }


def locate_model(model_uri: str) -> ModelLocation:
    """The version a URI names and where its artifacts are. MLflow's own error when the name,
    version or alias is unknown."""
    registered = registered_version(model_uri)
    label, source = model_uri, model_uri
    if registered is not None:
        label = f"{registered.name} version {registered.version} ({model_uri})"
        source = registered.source
    if source.startswith("models:/"):  # a logged model (MLflow 3): its own artifact folder
        source = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
    return ModelLocation(label, source)


def _listing(artifact_uri: str) -> dict[str, int | None]:
    """The files under an artifact folder, recursively, by relative path (size, or None where
    the store does not say). Empty for a folder that does not exist."""
    files: dict[str, int | None] = {}
    for entry in mlflow.artifacts.list_artifacts(artifact_uri=artifact_uri):
        name = PurePosixPath(entry.path).name
        if entry.is_dir:
            nested = _listing(f"{artifact_uri}/{name}")
            files.update({f"{name}/{path}": size for path, size in nested.items()})
        else:
            files[name] = entry.file_size
    return files


def check_model_artifacts(model_uri: str) -> ModelLocation:
    """Raise ModelArtifactsError unless the model's MLmodel and every checkpoint file it needs
    are in its artifact store, at their logged sizes. Lists the store; downloads only MLmodel."""
    try:
        location = locate_model(model_uri)
        root = _listing(location.artifact_uri)
    except mlflow.MlflowException as error:
        raise ModelArtifactsError(f"{model_uri}: {' '.join(error.message.split())}") from None
    where = f"{location.label}: artifacts at {location.artifact_uri}"
    if MLMODEL not in root:
        raise ModelArtifactsError(f"{where} lack {MLMODEL} (the folder is gone or emptied)")
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    expected = metadata.get("checkpoint_files") or dict.fromkeys(INFERENCE_FILES)
    for path, size in expected.items():
        stored = f"{ARTIFACTS_DIR}/{CHECKPOINT_ARTIFACT}/{path}"
        if stored not in root:
            raise ModelArtifactsError(f"{where} lack {stored}")
        if size is not None and root[stored] is not None and root[stored] != size:
            raise ModelArtifactsError(
                f"{where}: {stored} has {root[stored]} bytes, {size} were logged"
            )
    return location
