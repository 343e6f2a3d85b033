"""The frozen priors of a profile, built from their params sections, each loaded once.

The one place that turns params into perception models: the dataset's Dagster resource, the
served pipeline and the evaluation all ask a `Priors` for what they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from perception.captions import Captioner, load_captioner
from perception.faces import DlibFaceAnalyzer, FaceAnalyzer, load_face_analyzer
from perception.models import models_dir as resolve_models_dir
from perception.params import CaptionsParams, FacesParams, MasksParams, PosesParams
from perception.pose import MaskedPoseExtractor, RTMPoseEstimator, load_pose_estimator
from perception.segmentation import (
    GroundingDinoPersonDetector,
    SamSegmenter,
    load_person_detector,
    load_segmenter,
)

T = TypeVar("T")


@dataclass
class Priors:
    """The perception models of `profile` (`full`: under `models_dir`, default $CAMEO_MODELS)."""

    profile: str
    faces: FacesParams = field(default_factory=FacesParams)
    masks: MasksParams = field(default_factory=MasksParams)
    poses: PosesParams = field(default_factory=PosesParams)
    captions: CaptionsParams = field(default_factory=CaptionsParams)
    models_dir: str | Path | None = None
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    def _load(self, name: str, loader: Callable[[], T]) -> T:
        if name not in self._loaded:
            self._loaded[name] = loader()
        return self._loaded[name]

    def model_paths(self, stages: set[str]) -> dict[str, Path]:
        """The model files and folders `full` loads for these dataset stages, keyed by the
        params setting naming each (none in `tiny`)."""
        if self.profile != "full":
            return {}
        root = resolve_models_dir(self.models_dir)
        needed = {
            "faces": {"faces.model": self.faces.model},
            "masks": {"masks.model": self.masks.model}
            | (
                {"masks.person_detector": self.masks.person_detector}
                if self.masks.person_box_prompt
                else {}
            ),
            "poses": {"poses.model": self.poses.model},
            "captions": {"captions.model": self.captions.model},
        }
        return {
            setting: root / name
            for stage, settings in needed.items()
            if stage in stages
            for setting, name in settings.items()
        }

    def face_analyzer(self) -> FaceAnalyzer:
        p = self.faces
        return self._load(
            "faces",
            lambda: load_face_analyzer(
                self.profile, self.models_dir, p.model, p.det_size, p.det_thresh, p.min_face_px
            ),
        )

    def dlib_faces(self) -> DlibFaceAnalyzer:
        """dlib's detector, landmarks and recogniser (`faces.dlib`), on every profile."""
        p = self.faces
        return self._load(
            "faces:dlib",
            lambda: DlibFaceAnalyzer(
                p.dlib.detector, p.dlib.upsample, p.dlib.det_thresh, p.min_face_px, p.dlib.jitters
            ),
        )

    def recogniser(self, name: str) -> FaceAnalyzer:
        """A recogniser by name, whatever the profile: `dlib`, or an insightface folder under
        the models directory (with the face detector's settings)."""
        if name == "dlib":
            return self.dlib_faces()
        p = self.faces
        return self._load(
            f"faces:{name}",
            lambda: load_face_analyzer(
                "full", self.models_dir, name, p.det_size, p.det_thresh, p.min_face_px
            ),
        )

    def segmenter(self) -> SamSegmenter:
        return self._load(
            "segmenter",
            lambda: load_segmenter(
                self.profile, self.models_dir, self.masks.model, self.masks.dtype
            ),
        )

    def person_detector(self) -> GroundingDinoPersonDetector:
        return self._load(
            "person_detector",
            lambda: load_person_detector(self.profile, self.models_dir, self.masks.person_detector),
        )

    def pose_estimator(self) -> RTMPoseEstimator:
        return self._load(
            "pose", lambda: load_pose_estimator(self.profile, self.models_dir, self.poses.model)
        )

    def pose_extractor(self) -> MaskedPoseExtractor:
        """Masked image → pose drawing, as the dataset's poses stage makes them."""
        return MaskedPoseExtractor(
            self.pose_estimator(), self.poses.score_threshold, self.poses.min_keypoints
        )

    def captioner(self) -> Captioner:
        p = self.captions
        return self._load(
            "captioner",
            lambda: load_captioner(self.profile, self.models_dir, p.model, batch_size=p.batch_size),
        )
