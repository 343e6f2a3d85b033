"""The dlib face backend on the sample movie's real photographs: every face found where the
ground truth puts it, and the same person closer than different people."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest

from assets.characters import build_characters
from assets.faces import detect_faces
from assets.frames import extract_frames
from assets.sample_movie import PEOPLE, _portrait, compare_with_truth, identity_at
from core.layout import DataLayout
from orchestration.params import load_params
from perception.faces import (
    DLIB_EMBEDDING_DIM,
    EMBEDDING_DIM,
    DlibFaceAnalyzer,
    TinyFaceAnalyzer,
    copy_paste_score,
    cosine,
    dlib_model_file,
)
from perception.params import FacesParams
from perception.priors import Priors
from tests.conftest import PARAMS

# Frames of the sample movie: one from each single-person shot, and the three-person shot.
FRAMES = (150, 600, 1100, 1350, 1700)


@pytest.fixture(scope="module")
def dlib_faces() -> DlibFaceAnalyzer:
    return Priors("tiny").dlib_faces()


@pytest.fixture(scope="module")
def movie_frames(sample_root: Path) -> dict[int, np.ndarray]:
    """RGB frames of the sample movie by index."""
    frames = {}
    with av.open(str(sample_root / "movies" / "sample.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in FRAMES:
                frames[index] = frame.to_ndarray(format="rgb24")
            if index >= max(FRAMES):
                break
    return frames


def test_each_portrait_has_one_face_with_landmarks_and_a_unit_descriptor(dlib_faces):
    for identity in PEOPLE:
        portrait = _portrait(identity)
        # The astronaut's suit holds a face-like patch that HOG scores 0.12: under det_thresh.
        [face] = dlib_faces.detect(portrait)
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= portrait.shape[1] and 0 <= y1 < y2 <= portrait.shape[0]
        assert face.det_score >= dlib_faces.det_thresh
        assert face.embedding.shape == (DLIB_EMBEDDING_DIM,)
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.raw_norm > 0
        for points, landmarks in (
            (5, face.kps),
            (68, dlib_faces.landmarks(portrait, face.bbox, 68)),
        ):
            assert landmarks.shape == (points, 2)
            # On the face: within the box, give or take a quarter of its side (the chin is below).
            margin = 0.25 * (x2 - x1)
            assert (landmarks[:, 0] >= x1 - margin).all() and (landmarks[:, 0] <= x2 + margin).all()
            assert (landmarks[:, 1] >= y1 - margin).all() and (landmarks[:, 1] <= y2 + margin).all()
        # The base of the nose lies below both eyes and between them.
        eyes, nose = face.kps[:4], face.kps[4]
        assert nose[1] > eyes[:, 1].max() and eyes[:, 0].min() < nose[0] < eyes[:, 0].max()


def test_every_face_of_the_movie_frames_is_found_and_same_people_are_closer(
    dlib_faces, movie_frames, sample_root
):
    truth = json.loads(DataLayout(sample_root).ground_truth("sample").read_text())
    found: list[tuple[str, np.ndarray]] = []
    for index, frame in movie_frames.items():
        faces = dlib_faces.detect(frame)
        who = [identity_at(truth, index, face.bbox.tolist()) for face in faces]
        expected = sorted(p["identity"] for p in truth["frames"][index]["people"])
        assert sorted(map(str, who)) == expected, index  # each person once, nothing else
        found += zip(who, (face.embedding for face in faces), strict=True)
    assert {who for who, _ in found} == set(PEOPLE)
    same, different = [], []
    for (a, ea), (b, eb) in itertools.combinations(found, 2):
        (same if a == b else different).append(cosine(ea, eb))
    assert same and different
    assert min(same) > max(different)


def test_describe_embeds_a_box_another_detector_found(dlib_faces):
    """dlib can score faces the tiny cascade (or SCRFD) found: its descriptor of the cascade's
    box is the descriptor of its own box, near enough to tell the person."""
    portraits = {identity: _portrait(identity) for identity in PEOPLE}
    cascade = TinyFaceAnalyzer()
    own = {identity: dlib_faces.detect(image)[0].embedding for identity, image in portraits.items()}
    for identity, image in portraits.items():
        box = max(cascade.detect(image), key=lambda f: f.area).bbox
        embedding, raw_norm = dlib_faces.describe(image, box)
        assert raw_norm > 0
        similarities = {other: cosine(embedding, e) for other, e in own.items()}
        assert max(similarities, key=similarities.get) == identity
        assert similarities[identity] > 0.95


def test_dlib_settings_come_from_the_faces_section():
    priors = Priors("full", faces=FacesParams(dlib={"det_thresh": 5.0, "upsample": 0}))
    strict = priors.recogniser("dlib")
    assert isinstance(strict, DlibFaceAnalyzer) and (strict.det_thresh, strict.upsample) == (5, 0)
    assert strict.detect(_portrait("grace_hopper")) == []  # no face scores 5
    assert priors.recogniser("dlib") is strict  # loaded once


def test_the_cnn_detector_reads_its_model_file():
    cnn = DlibFaceAnalyzer(detector="cnn", upsample=0, det_thresh=0.5)
    [face] = cnn.detect(_portrait("luis_pedro_coelho"))
    assert face.det_score >= 0.5 and face.embedding.shape == (DLIB_EMBEDDING_DIM,)


def test_a_missing_model_file_is_named():
    with pytest.raises(FileNotFoundError, match=r"no_such_model\.dat"):
        dlib_model_file("no_such_model.dat")


def test_copy_paste_is_one_for_the_reference_and_minus_one_for_the_target():
    reference, target = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    halfway = np.array([1.0, 1.0])
    assert copy_paste_score(reference, reference, target) == pytest.approx(1.0)
    assert copy_paste_score(target, reference, target) == pytest.approx(-1.0)
    assert copy_paste_score(halfway, reference, target) == pytest.approx(0.0, abs=1e-9)
    # Scale does not matter: the recogniser's raw embeddings give the same score.
    assert copy_paste_score(3 * reference, 2 * reference, target) == pytest.approx(1.0)
    # Reference and target coincide: 0, as the benchmark scores it.
    assert copy_paste_score(reference, target, target) == 0.0


def test_characters_mined_with_dlib_match_the_ground_truth(dlib_faces, sample_root, tmp_path):
    """`faces.recogniser: dlib`: the tiny cascade's boxes, dlib's descriptors group them; at the
    triplets' threshold every group is one person and every person is found."""
    values = load_params(PARAMS, "tiny")
    frames = extract_frames(
        sample_root / "movies" / "sample.mp4",
        tmp_path / "frames",
        "sample",
        values.frames.stride,
        relative_to=tmp_path,
    )
    faces = detect_faces(frames, tmp_path, TinyFaceAnalyzer(), recogniser=dlib_faces)
    assert {len(e) for e in faces["identity_embedding"]} == {DLIB_EMBEDDING_DIM}
    assert {len(e) for e in faces["embedding"]} == {EMBEDDING_DIM}  # conditioning: unchanged
    threshold = values.triplets.min_identity_similarity
    params = values.characters.model_copy(update={"similarity_threshold": threshold})
    characters = build_characters(faces, params)
    truth = json.loads(DataLayout(sample_root).ground_truth("sample").read_text())
    report = compare_with_truth(characters, truth, values.frames.stride, params.min_frames)
    assert report["pure"], report["groups"]
    assert report["found"] == report["expected"] == sorted(PEOPLE)
