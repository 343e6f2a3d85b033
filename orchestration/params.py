"""The root of params.yaml: every section, composed from the packages that own them.

`load_params(path)` gives a `Params` with the active profile applied, or one ParamsError
listing every problem in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from assets.params import DatasetParams
from core.params import Section
from core.params import load_params as load_schema
from orchestration.kubernetes import KubernetesParams
from perception.params import similarity_scale_problem
from perception.priors import Priors
from serving.params import ServedSettings, ServingParams
from training.params import EvaluationParams, SyntheticParams, TrainingParams


class ExecutorParams(Section):
    """The `executor` section of params.yaml: how a local Dagster run executes its steps
    (CAMEO_ENV=local; on Kubernetes every step is a Job of its own)."""

    # in_process: every step in the run's process, one after another; multiprocess: each
    # step in its own process, up to max_concurrent at once. A movie's stages are a chain
    # with blocking checks, so a run has little to overlap, and each step process imports
    # the whole code location: in-process is the faster default (BENCHMARKS.md).
    kind: Literal["multiprocess", "in_process"] = "in_process"
    max_concurrent: int = Field(2, ge=1)


class Params(DatasetParams):
    """params.yaml: the dataset's sections, the synthetic characters, then training,
    evaluation, serving, Kubernetes, the local executor."""

    synthetic: SyntheticParams = SyntheticParams()
    training: TrainingParams = TrainingParams()
    evaluation: EvaluationParams = EvaluationParams()
    serving: ServingParams = ServingParams()
    kubernetes: KubernetesParams = KubernetesParams()
    executor: ExecutorParams = ExecutorParams()

    @model_validator(mode="after")
    def _same_person_on_the_profiles_scale(self) -> Params:
        # The split joins identities by the conditioning embedding: the profile's recogniser.
        problem = similarity_scale_problem(
            "training.same_person_similarity",
            self.training.same_person_similarity,
            {"full": "arcface"}.get(self.profile, self.profile),
        )
        if problem:
            raise ValueError(problem)
        return self

    def priors(self, models_dir: str | Path | None = None) -> Priors:
        """The perception models these params configure (`full`: under `models_dir`)."""
        return Priors(
            self.profile,
            faces=self.faces,
            masks=self.masks,
            poses=self.poses,
            captions=self.captions,
            models_dir=models_dir,
        )

    def served(self) -> ServedSettings:
        """What travels with a model logged under these params."""
        return ServedSettings(self.faces, self.poses, self.serving, self.training.trust_remote_code)


def load_params(path: str | Path, profile: str | None = None) -> Params:
    """params.yaml as `Params`, with `profile` (else CAMEO_PROFILE, else the file's) applied."""
    return load_schema(path, Params, profile)
