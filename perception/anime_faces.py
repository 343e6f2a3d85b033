"""Anime faces: nagadomi's `lbpcascade_animeface` (2011, MIT: the licence is in the XML file's
header, `perception/data/`), an OpenCV LBP cascade trained on anime and manga faces. It runs
offline on CPU with the project's own OpenCV, and reads no Pillow internals.

Photo detectors do not see these faces: on the 11 sprites of Debian's `renpy-thequestion` and
`renpy-demo` (real anime art, composited on white) dlib's HOG detector finds none, this
cascade all of them, and it finds nothing in the sample's photographs (BENCHMARKS.md, "Anime
faces on real anime art"). It is meant for anime inputs, and where a photo detector finds no
face; it gives boxes, no landmarks and no identity.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from perception.params import AnimeFacesParams

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


def on_white(path: Path) -> np.ndarray:
    """An image with transparency (a sprite: RGBA, grey with alpha, or a palette with a
    transparent entry) composited on white, as RGB; one with nothing visible is refused with
    the file's name."""
    with Image.open(path) as image:
        rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if not alpha.any():
        raise ValueError(f"{path.name}: fully transparent, nothing to see")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return np.asarray(white.convert("RGB"))
