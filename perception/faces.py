"""Face detection and identity embeddings.

`full`: insightface `FaceAnalysis` (antelopev2: SCRFD detector + ArcFace recognition) from a
local model folder in insightface's layout. `tiny`: scikit-image's bundled LBP frontal-face
cascade and a fixed random projection of the face's HOG descriptor, offline on CPU. Both
return the same `DetectedFace` records with L2-normed 512-d embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image

EMBEDDING_DIM = 512

# Five-point landmark template (eyes, nose tip, mouth corners) relative to the face box,
# used by the tiny profile whose cascade only gives boxes.
_FIVE_POINT_TEMPLATE = np.array(
    [[0.31, 0.40], [0.69, 0.40], [0.50, 0.58], [0.35, 0.76], [0.65, 0.76]], dtype=np.float32
)


@dataclass(frozen=True)
class DetectedFace:
    """One face in one image: pixel box (x1, y1, x2, y2), 5 keypoints, score, unit embedding,
    and the norm the recogniser's raw embedding had (InstantID's resampler reads raw ArcFace
    embeddings, i.e. `embedding * raw_norm`)."""

    bbox: np.ndarray
    kps: np.ndarray
    det_score: float
    embedding: np.ndarray
    raw_norm: float = 1.0

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.bbox
        return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


class FaceAnalyzer(Protocol):
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face in an RGB uint8 image of shape (H, W, 3)."""


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def identity_score(
    analyzer: FaceAnalyzer,
    reference_embedding: np.ndarray,
    output: PIL.Image.Image,
    inside: np.ndarray,
) -> float | None:
    """Cosine similarity between the reference's face and the painted one: the largest face in
    `output` whose box centre lies in the mask (`inside`); None when there is none."""
    faces = []
    for face in analyzer.detect(np.asarray(output.convert("RGB"))):
        x1, y1, x2, y2 = face.bbox
        row = min(max(int((y1 + y2) / 2), 0), inside.shape[0] - 1)
        col = min(max(int((x1 + x2) / 2), 0), inside.shape[1] - 1)
        if inside[row, col]:
            faces.append(face)
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    reference = reference_embedding / np.linalg.norm(reference_embedding)
    return float(np.dot(reference, face.embedding))


class InsightFaceAnalyzer:
    """insightface FaceAnalysis restricted to detection + recognition (ArcFace)."""

    def __init__(
        self,
        model_dir: str | Path,
        det_size: int = 640,
        det_thresh: float = 0.5,
        providers: list[str] | None = None,
    ) -> None:
        from insightface.app import FaceAnalysis

        from perception.models import onnx_providers

        model_dir = Path(model_dir)
        if not any(model_dir.glob("*.onnx")):
            raise FileNotFoundError(
                f"no insightface ONNX models in {model_dir}: unpack antelopev2 there "
                "(scrfd_10g_bnkps.onnx and glintr100.onnx at least)"
            )
        providers = providers or onnx_providers()
        try:
            self._app = FaceAnalysis(
                name=str(model_dir),
                allowed_modules=["detection", "recognition"],
                providers=providers,
            )
        except AssertionError:  # insightface asserts that a detector was found
            raise FileNotFoundError(f"no detection (SCRFD) model found in {model_dir}") from None
        if "recognition" not in self._app.models:
            raise FileNotFoundError(f"no recognition (ArcFace) model found in {model_dir}")
        ctx_id = 0 if providers[0] == "CUDAExecutionProvider" else -1
        self._app.prepare(ctx_id=ctx_id, det_thresh=det_thresh, det_size=(det_size, det_size))

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        return [
            DetectedFace(
                bbox=np.asarray(face.bbox, dtype=np.float32),
                kps=np.asarray(face.kps, dtype=np.float32),
                det_score=float(face.det_score),
                embedding=l2_normalize(np.asarray(face.embedding, dtype=np.float32)),
                raw_norm=float(np.linalg.norm(face.embedding)),
            )
            for face in self._app.get(bgr)
        ]


class TinyFaceAnalyzer:
    """Offline stand-in: LBP cascade boxes and a deterministic HOG-projection descriptor.

    The descriptor separates the distinct faces of the sample movie; it is a wiring
    component, not a face recogniser.
    """

    crop_side = 64
    min_neighbors = 6  # raw cascade hits a box needs; fewer lets textures through

    def __init__(self, min_face_px: int = 24, seed: int = 0) -> None:
        from skimage import data
        from skimage.feature import Cascade

        self._cascade = Cascade(data.lbp_frontal_face_cascade_filename())
        self._min_face_px = min_face_px
        hog_dim = len(self._hog(np.zeros((self.crop_side, self.crop_side), np.float32)))
        rng = np.random.default_rng(seed)
        self._projection = rng.standard_normal((EMBEDDING_DIM, hog_dim)).astype(np.float32)

    def _hog(self, gray_crop: np.ndarray) -> np.ndarray:
        from skimage.feature import hog

        return hog(gray_crop, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))

    def embed(self, gray: np.ndarray, bbox: np.ndarray) -> np.ndarray:
        """The raw (not normalised) descriptor of the face in `bbox`."""
        from skimage.transform import resize

        x1, y1, x2, y2 = np.round(bbox).astype(int)
        crop = resize(gray[y1:y2, x1:x2], (self.crop_side, self.crop_side), anti_aliasing=True)
        h = self._hog(crop)
        h = (h - h.mean()) / max(float(h.std()), 1e-6)
        return self._projection @ h.astype(np.float32)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        from skimage.color import rgb2gray

        gray = rgb2gray(image).astype(np.float32)
        height, width = gray.shape
        if min(height, width) < self._min_face_px:
            return []
        boxes = self._cascade.detect_multi_scale(
            img=gray,
            scale_factor=1.2,
            step_ratio=1,
            min_size=(self._min_face_px, self._min_face_px),
            max_size=(min(height, width), min(height, width)),
            min_neighbor_number=self.min_neighbors,
        )
        xywh = [(box["c"], box["r"], box["width"], box["height"]) for box in boxes]
        faces = []
        for x, y, w, h in _suppress_nested(xywh):
            bbox = np.array([x, y, x + w, y + h], dtype=np.float32)
            kps = bbox[:2] + _FIVE_POINT_TEMPLATE * np.array([w, h], dtype=np.float32)
            faces.append(
                # The cascade gives no confidence: every kept box scores 1.
                DetectedFace(
                    bbox=bbox,
                    kps=kps,
                    det_score=1.0,
                    embedding=l2_normalize(raw := self.embed(gray, bbox)),
                    raw_norm=float(np.linalg.norm(raw)),
                )
            )
        return faces


def _suppress_nested(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Largest first; drop a box when over 30% of it lies inside an already kept one."""
    kept: list[tuple[int, int, int, int]] = []
    for x, y, w, h in sorted(boxes, key=lambda b: -b[2] * b[3]):
        inside = any(
            max(0, min(x + w, kx + kw) - max(x, kx)) * max(0, min(y + h, ky + kh) - max(y, ky))
            > 0.3 * w * h
            for kx, ky, kw, kh in kept
        )
        if not inside:
            kept.append((x, y, w, h))
    return kept


def load_face_analyzer(
    profile: str,
    models_dir: str | Path | None = None,
    model: str = "antelopev2",
    det_size: int = 640,
    det_thresh: float = 0.5,
    min_face_px: int = 24,
) -> FaceAnalyzer:
    """The face analyzer of a profile: insightface from `<models_dir>/<model>` or the tiny one."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    return by_profile(
        profile,
        full=lambda: InsightFaceAnalyzer(
            resolve_models_dir(models_dir) / model, det_size, det_thresh
        ),
        tiny=lambda: TinyFaceAnalyzer(min_face_px=min_face_px),
    )
