"""The `full` face profile through the real insightface code path, on tiny random ONNX models.

The models (tests/onnx_faces.py) are laid out like antelopev2, so `load_face_analyzer` goes
through insightface's folder scan, model routing, SCRFD decoding and ArcFace alignment on CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD

from perception.faces import (
    EMBEDDING_DIM,
    DetectedFace,
    InsightFaceAnalyzer,
    load_face_analyzer,
)
from tests.onnx_faces import (
    DETECTOR_FILE,
    NUM_ANCHORS,
    RECOGNIZER_FILE,
    STRIDES,
    save_model_pack,
)

DET_SIZE = 160
DET_THRESH = 0.5
# Bright textured square (x1, y1, x2, y2) on a dark 320x240 image: the tiny detector's "face".
SQUARE = (120, 60, 216, 156)


def bright_square_image(seed: int, square: tuple[int, int, int, int] = SQUARE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 32, (240, 320, 3), dtype=np.uint8)
    x1, y1, x2, y2 = square
    image[y1:y2, x1:x2] = rng.integers(200, 256, (y2 - y1, x2 - x1, 3), dtype=np.uint8)
    return image


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("faces") / "models"
    save_model_pack(models)
    return models


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> InsightFaceAnalyzer:
    loaded = load_face_analyzer(
        "full", models_dir=models_dir, det_size=DET_SIZE, det_thresh=DET_THRESH
    )
    assert isinstance(loaded, InsightFaceAnalyzer)
    return loaded


@pytest.mark.parametrize("file", [DETECTOR_FILE, RECOGNIZER_FILE])
def test_models_pass_onnx_checker(models_dir: Path, file: str) -> None:
    onnx.checker.check_model(onnx.load(models_dir / "antelopev2" / file), full_check=True)


def test_detector_outputs_follow_scrfd_layout(models_dir: Path) -> None:
    session = onnxruntime.InferenceSession(
        models_dir / "antelopev2" / DETECTOR_FILE, providers=["CPUExecutionProvider"]
    )
    (image,) = session.get_inputs()
    assert image.name == "input.1"
    assert image.shape[:2] == [1, 3] and all(isinstance(d, str) for d in image.shape[2:])
    # A non-square input checks that H and W are independent dynamic axes.
    height, width = 96, 160
    outputs = session.run(None, {"input.1": np.zeros((1, 3, height, width), np.float32)})
    expected = [
        (1, (height // s) * (width // s) * NUM_ANCHORS, channels)
        for channels in (1, 4, 10)
        for s in STRIDES
    ]
    assert [o.shape for o in outputs] == expected


def test_full_profile_routes_models_through_insightface(analyzer: InsightFaceAnalyzer) -> None:
    models = analyzer._app.models
    assert set(models) == {"detection", "recognition"}
    assert isinstance(models["detection"], SCRFD)
    assert isinstance(models["recognition"], ArcFaceONNX)
    # det_size and det_thresh must reach the detector.
    assert models["detection"].input_sizes == [(DET_SIZE, DET_SIZE)]
    assert models["detection"].det_thresh == DET_THRESH


def test_detect_finds_the_bright_square(analyzer: InsightFaceAnalyzer) -> None:
    faces = analyzer.detect(bright_square_image(0))
    assert faces
    for face in faces:
        assert isinstance(face, DetectedFace)
        assert face.bbox.shape == (4,) and face.bbox.dtype == np.float32
        x1, y1, x2, y2 = face.bbox
        assert x2 > x1 and y2 > y1
        assert face.kps.shape == (5, 2) and np.isfinite(face.kps).all()
        assert DET_THRESH <= face.det_score <= 1.0
        assert face.embedding.shape == (EMBEDDING_DIM,) and face.embedding.dtype == np.float32
        assert np.isfinite(face.embedding).all()
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.raw_norm > 0 and np.isfinite(face.raw_norm)
    # Boxes come back in image pixels (the detector saw the image at half scale).
    best = max(faces, key=lambda f: f.det_score)
    cx, cy = (best.bbox[:2] + best.bbox[2:]) / 2
    sx1, sy1, sx2, sy2 = SQUARE
    assert sx1 <= cx <= sx2 and sy1 <= cy <= sy2


def test_dark_image_has_no_faces(analyzer: InsightFaceAnalyzer) -> None:
    assert analyzer.detect(np.full((240, 320, 3), 16, np.uint8)) == []


def test_det_thresh_above_every_score_finds_nothing(models_dir: Path) -> None:
    strict = load_face_analyzer("full", models_dir=models_dir, det_size=DET_SIZE, det_thresh=0.99)
    assert strict.detect(bright_square_image(0)) == []


def test_embeddings_are_deterministic(analyzer: InsightFaceAnalyzer, models_dir: Path) -> None:
    image = bright_square_image(0)
    first, second = analyzer.detect(image), analyzer.detect(image)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.bbox, b.bbox)
        np.testing.assert_array_equal(a.embedding, b.embedding)
    reloaded = load_face_analyzer(
        "full", models_dir=models_dir, det_size=DET_SIZE, det_thresh=DET_THRESH
    )
    np.testing.assert_allclose(
        reloaded.detect(image)[0].embedding, first[0].embedding, rtol=0, atol=1e-6
    )


def test_different_faces_give_different_embeddings(analyzer: InsightFaceAnalyzer) -> None:
    # Same layout, different texture inside the square.
    a = analyzer.detect(bright_square_image(0))[0].embedding
    b = analyzer.detect(bright_square_image(1))[0].embedding
    assert cosine(a, b) < 0.95
    # Two boxes of one image align two different crops.
    faces = analyzer.detect(bright_square_image(0))
    assert len(faces) >= 2
    assert cosine(faces[0].embedding, faces[1].embedding) < 0.99


def test_folder_without_onnx_models_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "antelopev2"
    folder.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder.resolve()))):
        load_face_analyzer("full", models_dir=tmp_path / "models")


def test_folder_without_recognizer_says_so(tmp_path: Path) -> None:
    folder = save_model_pack(tmp_path / "models", recognizer=False)
    with pytest.raises(FileNotFoundError, match="recognition") as error:
        load_face_analyzer("full", models_dir=tmp_path / "models", det_size=DET_SIZE)
    assert str(folder.resolve()) in str(error.value)


def test_folder_without_detector_says_so(tmp_path: Path) -> None:
    folder = save_model_pack(tmp_path / "models", detector=False)
    with pytest.raises(FileNotFoundError, match="detection") as error:
        load_face_analyzer("full", models_dir=tmp_path / "models", det_size=DET_SIZE)
    assert str(folder.resolve()) in str(error.value)
