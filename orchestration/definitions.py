"""The Dagster code location: `dg dev` (make ui; [tool.dg] names it). The dataset's
definitions (`orchestration.dataset_definitions`) and the training side: the synthetic
characters (their generator is training code), and the features, the model and its
evaluation, in `training_job`.
"""

from __future__ import annotations

import dagster as dg

from orchestration.dataset_definitions import build_dataset_definitions, build_resources
from orchestration.evaluation_assets import evaluation, identity_kept_without_copying
from orchestration.synthetic_assets import SYNTHETIC_ASSETS, SYNTHETIC_JOBS
from orchestration.training_assets import features, model

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets(features, model, evaluation),
    description="Precompute the features, train on the current triplets and evaluate the model, "
    "logged to MLflow.",
)


def build_definitions(resources: dict[str, dg.ConfigurableResource]) -> dg.Definitions:
    """The code location with these resources (the CLI passes its own)."""
    training = dg.Definitions(
        assets=[*SYNTHETIC_ASSETS, features, model, evaluation],
        asset_checks=[identity_kept_without_copying],
        jobs=[*SYNTHETIC_JOBS, training_job],
    )
    return dg.Definitions.merge(build_dataset_definitions(resources), training)


defs = build_definitions(build_resources())
