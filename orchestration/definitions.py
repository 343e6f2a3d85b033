"""The Dagster code location: `dagster dev -m orchestration.definitions`.

Resources and the executor are keyed by environment: CAMEO_ENV=local (default) runs every
step in one process; CAMEO_ENV=k8s launches each step as a Kubernetes Job (dagster-k8s).
"""

from __future__ import annotations

import os

import dagster as dg

from assets.captions import captions
from assets.characters import characters
from assets.faces import faces
from assets.frames import frames
from assets.masks import masks
from assets.poses import poses
from assets.references import references
from assets.triplets import triplets
from orchestration.evaluation_assets import evaluation, face_similarity_above_threshold
from orchestration.resources import DataResource, ParamsResource, PerceptionResource
from orchestration.sensors import movie_sensor
from orchestration.training_assets import model

# Per-movie stages in order, then the dataset built from all movies.
MOVIE_STAGES = (frames, faces, characters, masks, poses, captions, references)
STAGES = (*MOVIE_STAGES, triplets)
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
        "perception": PerceptionResource(
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
    assets=[*STAGES, model, evaluation],
    asset_checks=[face_similarity_above_threshold],
    sensors=[movie_sensor],
    resources=build_resources(),
    executor=executor_for(os.environ.get("CAMEO_ENV", "local")),
)
