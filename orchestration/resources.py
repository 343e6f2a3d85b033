"""Dagster resources: where the data lives, the parameters, and the perception models."""

from __future__ import annotations

import os
from collections.abc import Iterable

import dagster as dg
from pydantic import PrivateAttr

from core.layout import DataLayout
from orchestration.params import Params, load_params
from perception.priors import Priors


class MissingModelsError(FileNotFoundError):
    """Models the `full` profile needs are not under $CAMEO_MODELS; the message lists all."""


class DataResource(dg.ConfigurableResource):
    """The data root ($CAMEO_DATA); assets read and write the files it lays out."""

    root: str = "data"

    @property
    def layout(self) -> DataLayout:
        return DataLayout.from_env(self.root)


class ParamsResource(dg.ConfigurableResource):
    """params.yaml with the active profile's overrides (`profile` empty: CAMEO_PROFILE/file)."""

    path: str = "params.yaml"
    profile: str = ""

    _values: Params | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Validate params.yaml as a whole before any step runs (ParamsError lists it all).
        self._values = load_params(self.path, self.profile or None)

    @property
    def values(self) -> Params:
        if self._values is None:
            self._values = load_params(self.path, self.profile or None)
        return self._values


class PerceptionResource(dg.ConfigurableResource):
    """The frozen priors of the active profile, each loaded once per process on first use."""

    params: ParamsResource
    models_dir: str = ""

    _priors: Priors | None = PrivateAttr(default=None)

    @property
    def models(self) -> str | None:
        """The models directory: the resource's, else $CAMEO_MODELS (None: ./models)."""
        return self.models_dir or os.environ.get("CAMEO_MODELS") or None

    @property
    def priors(self) -> Priors:
        if self._priors is None:
            self._priors = self.params.values.priors(self.models)
        return self._priors

    def check_models(self, stages: Iterable[str]) -> None:
        """Raise MissingModelsError listing every model these stages need that is not on
        disk (`<params setting>: <path>`), before any of them is loaded. The triplets need
        every model, for the single images."""
        wanted = set(stages)
        if "triplets" in wanted:
            wanted |= {"faces", "masks", "poses", "captions"}
        missing = [
            f"{setting}: {path}"
            for setting, path in self.priors.model_paths(wanted).items()
            if not path.exists()
        ]
        if missing:
            raise MissingModelsError(
                f"profile full: {len(missing)} model(s) missing under $CAMEO_MODELS:\n"
                + "\n".join(f"  - {m}" for m in missing)
                + "\n`cameo weights status --for dataset` shows them with their licences; "
                "`cameo weights download --for dataset` downloads them"
            )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every model the run's stages need, checked at once before any stage runs.
        run = context.dagster_run
        steps = (run.step_keys_to_execute if run is not None else None) or ["triplets"]
        self.check_models(steps)  # a stage's step key is its name; no selection: every stage
