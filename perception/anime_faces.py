"""Anime faces: nagadomi's `lbpcascade_animeface` (2011, MIT: the licence is in the XML file's
header, `perception/data/`), an OpenCV LBP cascade trained on anime and manga faces. It runs
offline on CPU with the project's own OpenCV, and reads no Pillow internals.

Photo detectors do not see these faces: on the 11 sprites of Debian's `renpy-thequestion` and
`renpy-demo` (real anime art, composited on white) dlib's HOG detector finds none, this
cascade all of them, and it finds nothing in the sample's photographs (BENCHMARKS.md, "Anime
faces on real anime art"). It is meant for anime inputs, and where a photo detector finds no
face. It gives boxes only: `AnimeFaceAnalyzer` aligns each face by the landmark template of an
upright frontal face in its box and embeds it with a recogniser of the profile.

No recogniser here was trained on anime, and dlib's does not tell the sprites' two characters
apart (BENCHMARKS.md, "Anime identity"): by default an anime face does not condition the model
(`faces.anime.identity: dropped`, the face branch dropped as classifier-free guidance drops it).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from perception.faces import DetectedFace, FaceAnalyzer, template_keypoints
from perception.params import AnimeFacesParams

STYLES = ("photo", "anime")

CASCADE = Path(__file__).with_name("data") / "lbpcascade_animeface.xml"


class AnimeFaceDetector:
    """Face boxes (x1, y1, x2, y2, pixels) in an RGB image, largest first."""

    def __init__(self, params: AnimeFacesParams, min_face_px: int) -> None:
        self.cascade = cv2.CascadeClassifier(str(CASCADE))
        if self.cascade.empty():
            raise RuntimeError(f"OpenCV could not read the anime face cascade {CASCADE}")
        self.params, self.min_face_px = params, min_face_px

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        side = max(self.min_face_px, 1)
        found = self.cascade.detectMultiScale(
            gray,
            scaleFactor=self.params.scale_factor,
            minNeighbors=self.params.min_neighbors,
            minSize=(side, side),
        )
        boxes = [np.array([x, y, x + w, y + h], dtype=np.float32) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


class AnimeFaceAnalyzer(FaceAnalyzer):
    """Anime faces as `DetectedFace` records: the cascade's boxes, template landmarks, and the
    embedding `recogniser` gives the face so aligned (`FaceAnalyzer.embed_at`). The cascade
    has no confidence: every face scores 1."""

    def __init__(self, detector: AnimeFaceDetector, recogniser: FaceAnalyzer) -> None:
        self.detector, self.recogniser = detector, recogniser

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        faces = []
        for bbox in self.detector.detect(image):
            kps = template_keypoints(bbox)
            embedding, raw_norm = self.recogniser.embed_at(image, bbox, kps)
            faces.append(DetectedFace(bbox, kps, 1.0, embedding, raw_norm))
        return faces


def no_face_reason(style: str, anime: AnimeFacesParams) -> str:
    """Why an input of `style` gave no face: which detectors looked."""
    if style == "anime":
        return "no face found by the anime detector"
    if anime.fallback:
        return "no face found by the photo detector or the anime detector"
    return "no face found by the photo detector (faces.anime.fallback is off)"
