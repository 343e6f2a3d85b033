"""Face detection and identity embeddings.

`full`: insightface `FaceAnalysis` (antelopev2: SCRFD detector + ArcFace recognition) from a
local model folder in insightface's layout. `tiny`: OpenCV's bundled Haar frontal-face
cascade and a fixed random projection of the face's HOG descriptor, offline on CPU. Both
return the same `DetectedFace` records with L2-normed 512-d embeddings: the embedding that
conditions the model.

`dlib`, on every profile: dlib's HOG (or MMOD CNN) detector, its 5- and 68-point landmark
predictors and its ResNet recogniser (128-d), with the model files the `face-recognition-models`
package ships. It is the independent recogniser that scores identity (evaluation, the
triplets' identity check) and can group characters (`faces.recogniser: dlib`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import PIL.Image

EMBEDDING_DIM = 512
DLIB_EMBEDDING_DIM = 128

# Five-point landmark template (eyes, nose tip, mouth corners) relative to the face box,
# for detectors that only give boxes (the tiny profile's cascade, the anime cascade).
_FIVE_POINT_TEMPLATE = np.array(
    [[0.31, 0.40], [0.69, 0.40], [0.50, 0.58], [0.35, 0.76], [0.65, 0.76]], dtype=np.float32
)


def template_keypoints(bbox: np.ndarray) -> np.ndarray:
    """The (5, 2) landmarks of an upright frontal face filling `bbox` (x1, y1, x2, y2 px): how
    a face found by a box-only detector is aligned for a recogniser."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    return np.float32([x1, y1]) + _FIVE_POINT_TEMPLATE * np.float32([x2 - x1, y2 - y1])


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

    def detect_batch(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Every face of each image, in order; analyzers without batched models loop."""
        return [self.detect(image) for image in images]

    def embed_at(
        self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """The unit embedding and raw norm of a face another detector found (its box and 5
        landmarks in `image`), as this analyzer's recogniser sees it."""


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def face_at(analyzer: FaceAnalyzer, image: PIL.Image.Image, box: np.ndarray) -> DetectedFace | None:
    """The largest face the analyzer finds in `image` whose box contains the centre of `box`
    (x1, y1, x2, y2 px: where a known face is, whichever detector found it); None when none
    does."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    faces = [
        face
        for face in analyzer.detect(np.asarray(image.convert("RGB")))
        if face.bbox[0] <= cx <= face.bbox[2] and face.bbox[1] <= cy <= face.bbox[3]
    ]
    return max(faces, key=lambda f: f.area) if faces else None


def face_in_mask(
    analyzer: FaceAnalyzer, image: PIL.Image.Image, inside: np.ndarray
) -> DetectedFace | None:
    """The largest face in `image` whose box centre lies in the mask (`inside`, the image's
    size); None when there is none."""
    faces = []
    for face in analyzer.detect(np.asarray(image.convert("RGB"))):
        x1, y1, x2, y2 = face.bbox
        row = min(max(int((y1 + y2) / 2), 0), inside.shape[0] - 1)
        col = min(max(int((x1 + x2) / 2), 0), inside.shape[1] - 1)
        if inside[row, col]:
            faces.append(face)
    return max(faces, key=lambda f: f.area) if faces else None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (any scale)."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def identity_score(
    analyzer: FaceAnalyzer,
    reference_embedding: np.ndarray,
    output: PIL.Image.Image,
    inside: np.ndarray,
) -> float | None:
    """Cosine similarity between the reference's face and the painted one: the largest face in
    `output` whose box centre lies in the mask (`inside`); None when there is none."""
    face = face_in_mask(analyzer, output, inside)
    return None if face is None else cosine(reference_embedding, face.embedding)


def face_angle(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two face embeddings, in radians (any scale)."""
    return math.acos(min(max(cosine(a, b), -1.0), 1.0))


def copy_paste_score(output: np.ndarray, reference: np.ndarray, target: np.ndarray) -> float:
    """How much closer the output's face is to the reference than the real target frame's is,
    as WithAnyone's MultiID-Bench computes it (`arcface_metric.py`): (θ(output, target) -
    θ(output, reference)) / θ(reference, target), θ the angle between two embeddings. +1: the
    output is the reference, pasted; -1: the output is the target; 0: halfway, and 0 where
    reference and target coincide (the benchmark's degenerate case)."""
    span = face_angle(reference, target)
    if span < 1e-6:
        return 0.0
    return (face_angle(output, target) - face_angle(output, reference)) / span


def _insightface_face(bbox, kps, det_score, embedding) -> DetectedFace:
    embedding = np.asarray(embedding, dtype=np.float32)
    return DetectedFace(
        bbox=np.asarray(bbox, dtype=np.float32),
        kps=np.asarray(kps, dtype=np.float32),
        det_score=float(det_score),
        embedding=l2_normalize(embedding),
        raw_norm=float(np.linalg.norm(embedding)),
    )


class InsightFaceAnalyzer(FaceAnalyzer):
    """insightface FaceAnalysis restricted to detection + recognition (ArcFace).

    `detect` is insightface's own `FaceAnalysis.get`; `detect_batch` gives the same faces from
    one detector call per batch of frames and one recogniser call for all their faces
    (`perception.face_batch`).
    """

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
                f"no insightface ONNX models in {model_dir}: `cameo weights download "
                f"{model_dir.name} --accept-licence {model_dir.name}` puts them there "
                "(`cameo weights status` lists every missing model)"
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
            _insightface_face(face.bbox, face.kps, face.det_score, face.embedding)
            for face in self._app.get(bgr)
        ]

    def detect_batch(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        from perception.face_batch import detect_scrfd, embed_arcface

        bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
        found = detect_scrfd(self._app.det_model, bgr)
        faces = [
            (image, kps) for image, (_, points) in zip(bgr, found, strict=True) for kps in points
        ]
        embeddings = iter(embed_arcface(self._app.models["recognition"], faces))
        return [
            [
                _insightface_face(box[:4], kps, box[4], next(embeddings))
                for box, kps in zip(boxes, points, strict=True)
            ]
            for boxes, points in found
        ]

    def embed_at(
        self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray
    ) -> tuple[np.ndarray, float]:
        from perception.face_batch import embed_arcface

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        raw = embed_arcface(self._app.models["recognition"], [(bgr, kps)])[0]
        return l2_normalize(raw), float(np.linalg.norm(raw))


class TinyFaceAnalyzer(FaceAnalyzer):
    """Offline stand-in: Haar cascade boxes and a deterministic HOG-projection descriptor.

    The descriptor separates the distinct faces of the sample movie; it is a wiring
    component, not a face recogniser.
    """

    crop_side = 64
    # OpenCV's `alt2` frontal-face cascade at a 1.1 scale step, 5 raw hits per kept box: on the
    # sample movie's 37 sampled frames it finds all 44 faces with no other box, in a fifth of
    # the time of scikit-image's LBP cascade (which also boxed 4 textures).
    cascade_file = "haarcascade_frontalface_alt2.xml"
    scale_factor = 1.1
    min_neighbors = 5

    def __init__(self, min_face_px: int = 24, seed: int = 0) -> None:
        import cv2

        self._cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / self.cascade_file))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not read its {self.cascade_file}")
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
        boxes = self._cascade.detectMultiScale(
            np.round(gray * 255).astype(np.uint8),
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self._min_face_px, self._min_face_px),
        )
        # Sorted: OpenCV's worker threads may list the same boxes in another order.
        xywh = sorted(tuple(int(v) for v in box) for box in boxes)
        faces = []
        for x, y, w, h in _suppress_nested(xywh):
            bbox = np.array([x, y, x + w, y + h], dtype=np.float32)
            raw = self.embed(gray, bbox)
            # The cascade gives no confidence: every kept box scores 1.
            faces.append(
                DetectedFace(
                    bbox=bbox,
                    kps=template_keypoints(bbox),
                    det_score=1.0,
                    embedding=l2_normalize(raw),
                    raw_norm=float(np.linalg.norm(raw)),
                )
            )
        return faces

    def embed_at(
        self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray
    ) -> tuple[np.ndarray, float]:
        from skimage.color import rgb2gray

        raw = self.embed(rgb2gray(image).astype(np.float32), bbox)
        return l2_normalize(raw), float(np.linalg.norm(raw))


def dlib_model_file(name: str) -> Path:
    """A model file of the `face-recognition-models` package, found without importing it (its
    `__init__` imports pkg_resources, which current setuptools no longer has)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "dlib's model files need the face-recognition-models package (requirements.lock)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is missing from face-recognition-models ({path})")
    return path


DLIB_FILES = {
    "recogniser": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
    5: "shape_predictor_5_face_landmarks.dat",
    68: "shape_predictor_68_face_landmarks.dat",  # iBUG 300-W: not for commercial use
}


class DlibFaceAnalyzer(FaceAnalyzer):
    """dlib: HOG or MMOD CNN face boxes, 5-point landmarks (the chip alignment dlib's ResNet
    was trained with) and 128-d ResNet descriptors, on CPU.

    `kps` are dlib's 5 points: the outer and inner corner of the eye on the image's right, the
    outer and inner corner of the other eye, the base of the nose. `det_score` is the
    detector's own score (HOG: the SVM margin, not a probability). `describe` embeds a face in
    a box found by any detector, so dlib can score or group faces another analyzer found
    (`faces.recogniser: dlib`, the triplets' identity check). The 68-point model
    (`landmarks(..., points=68)`) is loaded only when asked for: it is trained on iBUG 300-W,
    whose licence excludes commercial use.
    """

    def __init__(
        self,
        detector: Literal["hog", "cnn"] = "hog",
        upsample: int = 1,
        det_thresh: float = 0.3,
        min_face_px: int = 24,
        jitters: int = 0,
    ) -> None:
        import dlib

        self._dlib = dlib
        self.detector = detector
        self.upsample = upsample
        self.det_thresh = det_thresh
        self.min_face_px = min_face_px
        self.jitters = jitters
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
        else:
            self._cnn = dlib.cnn_face_detection_model_v1(
                str(dlib_model_file(DLIB_FILES[detector + "_detector"]))
            )
        self._predictors = {5: dlib.shape_predictor(str(dlib_model_file(DLIB_FILES[5])))}
        self._recogniser = dlib.face_recognition_model_v1(
            str(dlib_model_file(DLIB_FILES["recogniser"]))
        )

    def _boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        if self.detector == "hog":
            rects, scores, _ = self._hog.run(image, self.upsample, self.det_thresh)
            found = list(zip(rects, scores, strict=True))
        else:
            found = [(d.rect, d.confidence) for d in self._cnn(image, self.upsample)]
        return [
            (np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32), float(score))
            for r, score in found
            if score >= self.det_thresh and min(r.width(), r.height()) >= self.min_face_px
        ]

    def _shape(self, image: np.ndarray, bbox: np.ndarray, points: int):
        if points not in self._predictors:
            self._predictors[points] = self._dlib.shape_predictor(
                str(dlib_model_file(DLIB_FILES[points]))
            )
        x1, y1, x2, y2 = (round(float(v)) for v in bbox)
        return self._predictors[points](image, self._dlib.rectangle(x1, y1, x2, y2))

    def landmarks(
        self, image: np.ndarray, bbox: np.ndarray, points: Literal[5, 68] = 5
    ) -> np.ndarray:
        """The (points, 2) landmarks of the face in `bbox` (x1, y1, x2, y2 px)."""
        return _points(self._shape(np.ascontiguousarray(image), bbox, points))

    def _descriptor(self, image: np.ndarray, shape) -> tuple[np.ndarray, float]:
        raw = np.asarray(
            self._recogniser.compute_face_descriptor(image, shape, self.jitters), np.float32
        )
        return l2_normalize(raw), float(np.linalg.norm(raw))

    def describe(self, image: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, float]:
        """The unit 128-d descriptor of the face in `bbox`, and the descriptor's raw norm."""
        image = np.ascontiguousarray(image)
        return self._descriptor(image, self._shape(image, bbox, 5))

    def embed_at(
        self, image: np.ndarray, bbox: np.ndarray, kps: np.ndarray
    ) -> tuple[np.ndarray, float]:
        # dlib's ResNet was trained on chips aligned by its own 5-point predictor.
        return self.describe(image, bbox)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = np.ascontiguousarray(image)
        faces = []
        for bbox, score in self._boxes(image):
            shape = self._shape(image, bbox, 5)
            embedding, raw_norm = self._descriptor(image, shape)
            faces.append(
                DetectedFace(
                    bbox=bbox,
                    kps=_points(shape),
                    det_score=score,
                    embedding=embedding,
                    raw_norm=raw_norm,
                )
            )
        return faces


def _points(shape) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


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
