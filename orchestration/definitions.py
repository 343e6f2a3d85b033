"""The Dagster code location: `dagster dev -m orchestration.definitions`.

Resources and the executor are keyed by environment: CAMEO_ENV=local (default) runs every
step in one process; CAMEO_ENV=k8s launches each step as a Kubernetes Job (dagster-k8s).
"""

from __future__ import annotations

import os

import dagster as dg

from assets.characters import characters
from assets.faces import faces
from assets.frames import frames
from orchestration.resources import DataResource, FaceModelResource, ParamsResource
from orchestration.sensors import movie_sensor

STAGES = (frames, faces, characters)
STAGE_NAMES = tuple(stage.key.to_user_string() for stage in STAGES)


def build_resources(
    data_root: str | None = None, params_path: str | None = None, profile: str | None = None
) -> dict[str, dg.ConfigurableResource]:
    """Resources from arguments, else CAMEO_DATA / CAMEO_PARAMS / CAMEO_PROFILE, else defaults."""
    params = ParamsResource(
        path=params_path or os.environ.get("CAMEO_PARAMS", "params.yaml"),
        profile=profile or os.environ.get("CAMEO_PROFILE", ""),
    )
    return {
        "data": DataResource(root=data_root or os.environ.get("CAMEO_DATA", "data")),
        "params": params,
        "face_model": FaceModelResource(
            params=params, models_dir=os.environ.get("CAMEO_MODELS", "")
        ),
    }


def executor_for(environment: str) -> dg.ExecutorDefinition:
    if environment == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if environment == "local":
        return dg.in_process_executor
    raise ValueError(f"CAMEO_ENV must be 'local' or 'k8s', got {environment!r}")


defs = dg.Definitions(
    assets=list(STAGES),
    sensors=[movie_sensor],
    resources=build_resources(),
    executor=executor_for(os.environ.get("CAMEO_ENV", "local")),
)
