"""Faces over many frames at once (`InsightFaceAnalyzer.detect_batch`) against insightface's own
frame-by-frame `FaceAnalysis.get`, on tiny random ONNX models in antelopev2's layout.

Tolerance: the same faces in the same order; boxes and keypoints within 1e-3 px, scores within
1e-5, unit embeddings within 1e-5 (ONNX Runtime may sum a batch in another order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perception.faces import InsightFaceAnalyzer, TinyFaceAnalyzer, load_face_analyzer
from perception.models import takes_batches
from tests.onnx_faces import save_model_pack
from tests.test_faces_full import DET_SIZE, DET_THRESH, bright_square_image


def frames() -> list[np.ndarray]:
    """Squares at different places and sizes, a dark frame without faces, a frame of another
    shape (letterboxed differently)."""
    images = [
        bright_square_image(0),
        bright_square_image(1, (20, 30, 100, 110)),
        np.full((240, 320, 3), 16, np.uint8),
        bright_square_image(2, (200, 100, 300, 200)),
    ]
    tall = np.random.default_rng(3).integers(0, 32, (320, 200, 3), dtype=np.uint8)
    tall[100:180, 50:130] = 230
    return [*images, tall]


def assert_same_faces(batched, single) -> None:
    assert len(batched) == len(single)
    for b, s in zip(batched, single, strict=True):
        np.testing.assert_allclose(b.bbox, s.bbox, rtol=0, atol=1e-3)
        np.testing.assert_allclose(b.kps, s.kps, rtol=0, atol=1e-3)
        assert b.det_score == pytest.approx(s.det_score, abs=1e-5)
        np.testing.assert_allclose(b.embedding, s.embedding, rtol=0, atol=1e-5)
        assert b.raw_norm == pytest.approx(s.raw_norm, rel=1e-5)


@pytest.mark.parametrize(
    ("detector_batch", "recognizer_batch", "batched"),
    [("batch", "None", True), (1, 1, False)],
    ids=["free batch axis", "fixed at batch 1"],
)
def test_detect_batch_matches_insightface_frame_by_frame(
    tmp_path: Path, detector_batch, recognizer_batch, batched: bool
) -> None:
    save_model_pack(tmp_path, detector_batch=detector_batch, recognizer_batch=recognizer_batch)
    analyzer = load_face_analyzer(
        "full", models_dir=tmp_path, det_size=DET_SIZE, det_thresh=DET_THRESH
    )
    assert isinstance(analyzer, InsightFaceAnalyzer)
    det, rec = analyzer._app.det_model, analyzer._app.models["recognition"]
    assert takes_batches(det.session) == batched and takes_batches(rec.session) == batched

    images = frames()
    calls = {"det": 0, "rec": 0}
    for name, session in (("det", det.session), ("rec", rec.session)):
        run = session.run

        def counted(*args, _run=run, _name=name, **kwargs):
            calls[_name] += 1
            return _run(*args, **kwargs)

        session.run = counted
    found = analyzer.detect_batch(images)
    faces = sum(len(f) for f in found)
    if batched:  # one call for the frames, one for all their faces
        assert calls == {"det": 1, "rec": 1}
    else:
        assert calls["rec"] == faces
    assert faces >= len(images) - 1  # every frame but the dark one has faces
    assert found[2] == []
    for batch_faces, image in zip(found, images, strict=True):
        assert_same_faces(batch_faces, analyzer.detect(image))


def test_empty_batch(tmp_path: Path) -> None:
    save_model_pack(tmp_path, detector_batch="batch")
    analyzer = load_face_analyzer("full", models_dir=tmp_path, det_size=DET_SIZE)
    assert analyzer.detect_batch([]) == []


def test_tiny_analyzer_batch_is_frame_by_frame() -> None:
    analyzer = TinyFaceAnalyzer()
    images = frames()[:2]
    for batch_faces, image in zip(analyzer.detect_batch(images), images, strict=True):
        assert_same_faces(batch_faces, analyzer.detect(image))
