"""A logged model's files, checked before anything loads them: `cameo serve`, `serve-check`,
`evaluate` and `inpaint --model` fail in one line that names the model version, its artifact
location and the first missing or short file, instead of a loader's traceback.

`log_model` records the size of every checkpoint file it logs (`checkpoint_files` in the
model's metadata); versions logged before that are checked for the files inference reads.

Loading a version logged from code runs its code file: a version whose code file is not this
installation's `serving/logged_model.py` (byte for byte), or that brings code of its own
(`code_paths`, another loader), is refused before anything runs it, and `cameo model promote`
refuses to point an alias at it. Whoever can register a version cannot make the serving pods
run code of their choosing.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import mlflow
from mlflow.models.model import MODEL_CODE_PATH, ModelInfo

from core.versioning import sha256
from training.model import ADAPTER_FILES, CHECKPOINT_INFO, CONTROLNET_DIR
from training.tracking import registered_version

CHECKPOINT_ARTIFACT = "checkpoint"  # the artifact the checkpoint is logged as
MLMODEL = "MLmodel"
# The key of the model's metadata (its MLmodel file) that holds what `load_context` needs.
SETTINGS_METADATA = "served_settings"
# The model's code file (models-from-code): loading a version runs it, no pickle involved.
MODEL_CODE = Path(__file__).resolve().parent / "logged_model.py"
# The pyfunc loader of models logged from code; any other runs what the version names.
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
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
    """A logged model whose artifacts are gone, incomplete or carry foreign code; the message is
    one line."""


def installed_commit() -> str | None:
    """The git commit of this installation's code (None outside a git checkout, e.g. the
    image)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=MODEL_CODE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


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
    info = mlflow.models.get_model_info(model_uri)
    expected = (info.metadata or {}).get("checkpoint_files") or dict.fromkeys(INFERENCE_FILES)
    for path, size in expected.items():
        stored = f"{ARTIFACTS_DIR}/{CHECKPOINT_ARTIFACT}/{path}"
        if stored not in root:
            raise ModelArtifactsError(f"{where} lack {stored}")
        if size is not None and root[stored] is not None and root[stored] != size:
            raise ModelArtifactsError(
                f"{where}: {stored} has {root[stored]} bytes, {size} were logged"
            )
    check_model_code(info, location)
    return location


def check_model_code(info: ModelInfo, location: ModelLocation) -> None:
    """Raise ModelArtifactsError unless the version's code file is this installation's
    `serving/logged_model.py` and the version names no other code (`code_paths`, a loader of
    its own). Versions pickled before models-from-code have no code file: `cameo model list`
    shows them for logging again."""
    flavor = info.flavors.get("python_function", {})
    if MODEL_CODE_PATH not in flavor:
        return
    where = f"{location.label}: artifacts at {location.artifact_uri}"
    if flavor.get("loader_module") != CODE_LOADER or flavor.get("code"):
        raise ModelArtifactsError(
            f"{where} load through {flavor.get('loader_module')} with code paths "
            f"{flavor.get('code')}, not only {CODE_LOADER}: refusing to run code it brings"
        )
    name = PurePosixPath(str(flavor[MODEL_CODE_PATH])).name
    with tempfile.TemporaryDirectory() as tmp:
        logged = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.artifact_uri}/{name}", dst_path=tmp
            )
        )
        logged_digest = sha256(logged)
    installed_digest = sha256(MODEL_CODE)
    if logged_digest != installed_digest:
        logged_commit = (info.metadata or {}).get("code_version") or "unknown"
        raise ModelArtifactsError(
            f"{where}: its code file {name} (sha256 {logged_digest[:12]}, logged at commit "
            f"{logged_commit}) is not this installation's {MODEL_CODE.name} (sha256 "
            f"{installed_digest[:12]}, commit {installed_commit() or 'unknown'}): refusing to "
            "run code it was not built with; log its checkpoint again (`cameo model log`)"
        )
