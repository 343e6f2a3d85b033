"""The dataset half of the code location (`orchestration.definitions` adds the training
half): the per-movie stages and the triplets with their checks, their jobs and sensors, the
resources and the executor. `cameo dataset build` runs these definitions alone, so the build
loads no training or serving code.

Resources and the executor are keyed by environment: CAMEO_ENV=local (default) runs a run's
steps as params.yaml's `executor` says (by default in the run's process, in order);
CAMEO_ENV=k8s launches each step as a Kubernetes Job (dagster-k8s).
"""

from __future__ import annotations

import os

import dagster as dg

from assets.captions import captions, captions_check
from assets.characters import characters, characters_check
from assets.faces import faces, faces_check
from assets.frames import frames, frames_check
from assets.masks import masks, masks_check
from assets.partitions import movie_partitions
from assets.poses import poses, poses_check
from assets.references import references, references_check
from assets.triplets import triplets, triplets_check
from core.params import ParamsError
from orchestration.environment import cameo_environment
from orchestration.params import ExecutorParams
from orchestration.resources import DataResource, ParamsResource, PerceptionResource
from orchestration.sensors import movie_sensor

# Per-movie stages in order, then the dataset built from all movies.
MOVIE_STAGES = (frames, faces, characters, masks, poses, captions, references)
STAGES = (*MOVIE_STAGES, triplets)
STAGE_NAMES = tuple(stage.key.to_user_string() for stage in STAGES)
# Each stage's blocking GX check, a definition of its own: re-runnable alone from the UI.
CHECKS = (
    frames_check,
    faces_check,
    characters_check,
    masks_check,
    poses_check,
    captions_check,
    references_check,
    triplets_check,
)

# Named jobs, so runs say what they are (in the UI, `dagster job launch`, the CLI).
movie_job = dg.define_asset_job(
    "movie_job",
    selection=dg.AssetSelection.assets(*MOVIE_STAGES),
    partitions_def=movie_partitions,
    description="Every per-movie stage of one movie (a partition), with their checks.",
)
triplets_job = dg.define_asset_job(
    "triplets_job",
    selection=dg.AssetSelection.assets(triplets),
    description="The triplet dataset from every complete movie and every single image.",
)
DATASET_JOBS = (movie_job, triplets_job)

# Evaluates the triplets' automation condition: the dataset follows the movies the sensor
# brings in.
dataset_automation = dg.AutomationConditionSensorDefinition(
    "dataset_automation",
    target=dg.AssetSelection.assets(triplets),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
DATASET_SENSORS = (movie_sensor, dataset_automation)


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


def executor_for(environment: str, local: ExecutorParams) -> dg.ExecutorDefinition:
    """A Kubernetes Job per step on k8s; locally, the `executor` section's executor."""
    if environment == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if environment != "local":
        raise ValueError(f"CAMEO_ENV must be 'local' or 'k8s', got {environment!r}")
    if local.kind == "in_process":
        return dg.in_process_executor
    return dg.multiprocess_executor.configured({"max_concurrent": local.max_concurrent})


def local_executor_params(params: ParamsResource) -> ExecutorParams:
    """The `executor` section; its defaults where params.yaml cannot be read when the
    definitions load (e.g. another working directory): a run then stops at its resources'
    setup, listing the file's problems."""
    try:
        return params.values.executor
    except (OSError, ParamsError):
        return ExecutorParams()


def build_dataset_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The dataset's definitions with these resources (what `cameo dataset build` runs)."""
    return dg.Definitions(
        assets=list(STAGES),
        asset_checks=list(CHECKS),
        jobs=list(DATASET_JOBS),
        sensors=list(DATASET_SENSORS),
        resources=resources,
        executor=executor_for(cameo_environment(), local_executor_params(resources["params"])),
    )
