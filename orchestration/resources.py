"""Dagster resources: where the data lives, the parameters, and the perception models."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from assets.layout import DataLayout
from assets.params import load_params
from perception.captions import Captioner, load_captioner
from perception.faces import FaceAnalyzer, load_face_analyzer
from perception.models import models_dir as resolve_models_dir
from perception.pose import RTMPoseEstimator, load_pose_estimator
from perception.segmentation import (
    GroundingDinoPersonDetector,
    SamSegmenter,
    load_person_detector,
    load_segmenter,
)


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

    _values: dict[str, Any] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Validate params.yaml as a whole before any step runs (ParamsError lists it all).
        self._values = load_params(self.path, self.profile or None)

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            self._values = load_params(self.path, self.profile or None)
        return self._values

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values.get(name, {}))


class PerceptionResource(dg.ConfigurableResource):
    """The frozen priors of the active profile, each loaded once per process on first use."""

    params: ParamsResource
    models_dir: str = ""

    _loaded: dict[str, Any] = PrivateAttr(default_factory=dict)

    def _load(self, name: str, loader: Callable[[], Any]) -> Any:
        if name not in self._loaded:
            self._loaded[name] = loader()
        return self._loaded[name]

    @property
    def _profile(self) -> str:
        return self.params.values["profile"]

    @property
    def _models(self) -> str | None:
        return self.models_dir or os.environ.get("CAMEO_MODELS") or None

    def model_paths(self, stages: Iterable[str]) -> dict[str, Path]:
        """The model files and folders the `full` profile loads for these dataset stages,
        keyed by the params setting naming each (none in `tiny`). The triplets need every
        model, for the single images."""
        if self._profile != "full":
            return {}
        p = self.params.values
        needed = {
            "faces": ["faces.model"],
            "masks": ["masks.model"] + ["masks.person_detector"] * p["masks"]["person_box_prompt"],
            "poses": ["poses.model"],
            "captions": ["captions.model"],
        }
        wanted = set(stages)
        if "triplets" in wanted:
            wanted |= set(needed)
        root = resolve_models_dir(self._models)
        return {
            setting: root / p[setting.split(".")[0]][setting.split(".")[1]]
            for stage, settings in needed.items()
            if stage in wanted
            for setting in settings
        }

    def check_models(self, stages: Iterable[str]) -> None:
        """Raise MissingModelsError listing every model these stages need that is not on
        disk (`<params setting>: <path>`), before any of them is loaded."""
        missing = [
            f"{setting}: {path}"
            for setting, path in self.model_paths(stages).items()
            if not path.exists()
        ]
        if missing:
            raise MissingModelsError(
                f"profile full: {len(missing)} model(s) missing under $CAMEO_MODELS:\n"
                + "\n".join(f"  - {m}" for m in missing)
            )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every model the run's stages need, checked at once before any stage runs.
        run = context.dagster_run
        steps = (run.step_keys_to_execute if run is not None else None) or ["triplets"]
        self.check_models(steps)  # a stage's step key is its name; no selection: every stage

    def faces(self) -> FaceAnalyzer:
        p = self.params.section("faces")
        return self._load(
            "faces",
            lambda: load_face_analyzer(
                self._profile,
                self._models,
                model=p.get("model", "antelopev2"),
                det_size=p.get("det_size", 640),
                det_thresh=p.get("det_thresh", 0.5),
                min_face_px=p.get("min_face_px", 24),
            ),
        )

    def segmenter(self) -> SamSegmenter:
        model = self.params.section("masks").get("model", "sam")
        return self._load("segmenter", lambda: load_segmenter(self._profile, self._models, model))

    def person_detector(self) -> GroundingDinoPersonDetector:
        model = self.params.section("masks").get("person_detector", "grounding-dino")
        return self._load(
            "person_detector", lambda: load_person_detector(self._profile, self._models, model)
        )

    def pose_estimator(self) -> RTMPoseEstimator:
        p = self.params.section("poses")
        kwargs = {"model": p["model"]} if "model" in p else {}
        return self._load(
            "pose", lambda: load_pose_estimator(self._profile, self._models, **kwargs)
        )

    def captioner(self) -> Captioner:
        p = self.params.section("captions")
        kwargs = {"model": p["model"]} if "model" in p else {}
        return self._load(
            "captioner", lambda: load_captioner(self._profile, self._models, **kwargs)
        )
