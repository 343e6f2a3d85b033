"""The frozen priors of a profile, built from their params sections, each loaded once.

The one place that turns params into perception models: the dataset's Dagster resource, the
served pipeline and the evaluation all ask a `Priors` for what they run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from perception.anime_faces import AnimeFaceAnalyzer, AnimeFaceDetector, no_face_reason
from perception.anime_segmentation import AnimeSegmenter, load_anime_segmenter
from perception.captions import Captioner, load_captioner
from perception.faces import DetectedFace, DlibFaceAnalyzer, FaceAnalyzer, load_face_analyzer
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

    def anime_face_analyzer(self) -> AnimeFaceAnalyzer:
        """Anime faces (`faces.anime`), embedded by the profile's recogniser."""
        return self._load(
            "faces:anime",
            lambda: AnimeFaceAnalyzer(
                AnimeFaceDetector(self.faces.anime, self.faces.min_face_px), self.face_analyzer()
            ),
        )

    def find_faces(self, image: np.ndarray, style: str) -> tuple[list[DetectedFace], str]:
        """The faces of an input of `style` (photo or anime) and the style they were found in:
        a photo in which the profile's detector finds none is anime if the anime detector
        finds one (`faces.anime.fallback`)."""
        if style == "photo":
            faces = self.face_analyzer().detect(image)
            if faces or not self.faces.anime.fallback:
                return faces, style
        faces = self.anime_face_analyzer().detect(image)
        return faces, "anime" if faces else style

    def reference_face(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """What a reference image's largest face conditions the model on: its raw-scale
        embedding (unit x raw norm, as InstantID reads it), and whether it is dropped (an
        anime face with `faces.anime.identity: dropped`: zeros, the unconditional input).
        ValueError, naming the detectors that looked, when there is no face."""
        faces, style = self.find_faces(image, "photo")
        if not faces:
            raise ValueError(no_face_reason(style, self.faces.anime))
        face = max(faces, key=lambda f: f.area)
        dropped = self.faces.anime.drops_face(style)
        return face.embedding * np.float32(0.0 if dropped else face.raw_norm), dropped

    def face_analyzer_for(self, style: str) -> FaceAnalyzer:
        return self.anime_face_analyzer() if style == "anime" else self.face_analyzer()

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

    def anime_segmenter(self) -> AnimeSegmenter:
        """The anime character segmenter (`masks.anime`, article Note 2)."""
        return self._load(
            "segmenter:anime",
            lambda: load_anime_segmenter(self.profile, self.models_dir, self.masks.anime),
        )

    def segmenter_for(self, style: str) -> SamSegmenter | AnimeSegmenter:
        """What masks an input of `style`: SAM for photographs, the anime segmenter for anime."""
        return self.anime_segmenter() if style == "anime" else self.segmenter()

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
