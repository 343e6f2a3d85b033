"""Dagster resources: where the data lives, the parameters, and the perception models."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from assets.layout import DataLayout
from assets.params import load_params
from perception.faces import FaceAnalyzer, load_face_analyzer


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

    @property
    def values(self) -> dict[str, Any]:
        if self._values is None:
            self._values = load_params(self.path, self.profile or None)
        return self._values

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.values.get(name, {}))


class FaceModelResource(dg.ConfigurableResource):
    """The face analyzer of the active profile, loaded once per process on first use."""

    params: ParamsResource
    models_dir: str = ""

    _analyzer: FaceAnalyzer | None = PrivateAttr(default=None)

    def analyzer(self) -> FaceAnalyzer:
        if self._analyzer is None:
            faces = self.params.section("faces")
            self._analyzer = load_face_analyzer(
                self.params.values["profile"],
                self.models_dir or os.environ.get("CAMEO_MODELS") or None,
                model=faces.get("model", "antelopev2"),
                det_size=faces.get("det_size", 640),
                det_thresh=faces.get("det_thresh", 0.5),
                min_face_px=faces.get("min_face_px", 24),
            )
        return self._analyzer
