"""The completing stages' rules on small inputs, and each bad case's recorded reason."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from assets.captions import CaptionsParams, caption_frames
from assets.masks import MasksParams, mask_skip_reason, segment_character
from assets.params import TripletsParams
from assets.references import ReferencesParams, segment_reference
from assets.sample_movie import _portrait
from assets.singles import single_triplet
from assets.stage import skipped_metadata
from assets.triplet import write_triplet
from assets.triplets import check_triplets, dvc_md5, movie_triplets, write_manifest
from core.layout import DataLayout
from orchestration.resources import ParamsResource, PerceptionResource
from perception.captions import TinyCaptioner
from perception.pose import MaskedPoseExtractor, RTMPoseEstimator, extract_pose, masked_image
from perception.priors import Priors
from perception.segmentation import SamSegmenter
from tests.conftest import PARAMS


@pytest.fixture(scope="module")
def perception() -> PerceptionResource:
    return PerceptionResource(params=ParamsResource(path=str(PARAMS), profile="tiny"))


def test_mask_skip_reasons():
    params = MasksParams(min_area_fraction=0.01, max_area_fraction=0.95)
    assert mask_skip_reason(0.3, True, params) == ""
    assert mask_skip_reason(0.0, True, params).startswith("empty mask")
    assert mask_skip_reason(0.99, True, params).startswith("mask covers the frame")
    assert mask_skip_reason(0.3, False, params) == "mask misses the face centre"


def test_segment_character_records_what_sam_returned():
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:80, 40:90] = 200
    mask, record = segment_character(
        image, np.array([50, 25, 80, 50]), SamSegmenter.tiny(), None, MasksParams()
    )
    assert mask.shape == (96, 128) and mask.dtype == bool
    assert record["area_fraction"] == pytest.approx(mask.mean())
    assert record["face_center_inside"] == bool(mask[37, 65])
    assert record["prompt"] == "point" and record["person_box"] is None
    assert (record["status"] == "ok") == (record["skip_reason"] == "")
    # Note 1: the person box overlapping the face most becomes a box prompt.
    people = np.array([[0, 0, 30, 90], [35, 10, 95, 95]], dtype=np.float32)
    _, record = segment_character(
        image, np.array([50, 25, 80, 50]), SamSegmenter.tiny(), people, MasksParams()
    )
    assert record["prompt"] == "point+box" and record["person_box"] == [35, 10, 95, 95]


def test_pose_is_taken_from_the_masked_image_and_can_be_missing():
    image = np.full((120, 90, 3), 180, np.uint8)
    mask = np.zeros((120, 90), bool)
    mask[10:110, 20:70] = True
    assert masked_image(image, mask)[0, 0].tolist() == [0, 0, 0]
    estimator = RTMPoseEstimator.tiny()
    pose, reason = extract_pose(estimator, image, mask, min_keypoints=1)
    assert reason == "" and pose.keypoints.shape == (133, 2)
    pose, reason = extract_pose(estimator, image, mask, min_keypoints=134)
    assert pose is None and reason.startswith("no pose found")
    pose, reason = extract_pose(estimator, image, np.zeros_like(mask))
    assert pose is None and reason == "empty mask"
    # The inpainting pipeline's extractor sees only the masked image and draws the same pose.
    control = MaskedPoseExtractor(estimator, min_keypoints=1)(masked_image(image, mask))
    assert control.shape == (120, 90, 3) and control.any()
    with pytest.raises(ValueError, match="no pose found"):
        MaskedPoseExtractor(estimator, min_keypoints=134)(masked_image(image, mask))


def test_reference_crop_removes_the_background():
    image = np.full((50, 60, 3), 7, np.uint8)
    mask = np.zeros((50, 60), bool)
    mask[10:30, 20:40] = True
    mask[10, 20] = False
    crop = segment_reference(image, mask, ReferencesParams(padding=0.0, background=255))
    assert crop.shape == (20, 20, 3)
    assert crop[0, 0].tolist() == [255, 255, 255] and crop[5, 5].tolist() == [7, 7, 7]
    assert segment_reference(image, np.zeros_like(mask), ReferencesParams()) is None


def test_captions_breaking_the_template_are_skipped_with_the_rules_broken(tmp_path: Path):
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "f.jpg")
    poses = pd.DataFrame(
        {
            "movie": "m",
            "character_id": [0, 0],
            "frame_idx": [0, 50],
            "path": ["f.jpg", "f.jpg"],
            "status": ["ok", "skipped"],
        }
    )
    ok = caption_frames(poses, tmp_path, TinyCaptioner(), CaptionsParams())
    assert ok["frame_idx"].tolist() == [0] and ok["status"].tolist() == ["ok"]
    strict = caption_frames(
        poses, tmp_path, TinyCaptioner(), CaptionsParams(min_words=300, max_words=400)
    )
    assert strict["status"].tolist() == ["skipped"]
    assert "outside 300-400" in strict["skip_reason"].iloc[0]


def test_unreadable_single_image_is_skipped_with_its_name(tmp_path: Path, perception):
    bad = tmp_path / "hero.png"
    bad.write_bytes(b"not a png")
    params = perception.params.values
    triplet, stage, reason = single_triplet("hero", bad, "photo", perception.priors, params)
    assert triplet is None and stage == "read" and "hero.png" in reason


def test_single_image_becomes_a_flipped_triplet(sample_root: Path, perception):
    single = DataLayout(sample_root).singles_dir / "eileen_collins.png"
    triplet, stage, reason = single_triplet(
        "eileen_collins", single, "photo", perception.priors, perception.params.values
    )
    assert triplet is not None, (stage, reason)
    np.testing.assert_array_equal(
        triplet.images["target.png"], triplet.images["reference.png"][:, ::-1]
    )
    assert len(triplet.face_embedding) == 512


def test_dvc_md5_is_the_hash_dvc_records(tmp_path: Path):
    folder = tmp_path / "triplets"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.txt").write_text("x")
    (folder / "manifest.json").write_text("{}")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "triplets"], cwd=tmp_path, check=True)
    recorded = (tmp_path / "triplets.dvc").read_text()
    assert f"md5: {dvc_md5(folder)}" in recorded


ONE_PERSON = ("eileen_collins",) * 3 + ("grace_hopper",) * 2
# Character 0's frames show three people: every (reference, target) pair it can form crosses.
MIS_GROUPED = (
    "eileen_collins",
    "grace_hopper",
    "luis_pedro_coelho",
    "grace_hopper",
    "grace_hopper",
)


def small_movie_dataset(root: Path, people: tuple[str, ...] = ONE_PERSON) -> DataLayout:
    """Two characters in movie 'm', frames of the sample movie's photographs (`people`, one a
    frame, each placed a little differently): character 0 has three usable frames, character 1
    loses its frames to an empty mask, a missing pose and a caption that breaks the template."""
    layout = DataLayout(root)
    frames = [0, 50, 100, 150, 200]
    for stage in ("frames", "masks", "poses", "references"):
        layout.stage_dir(stage, "m").mkdir(parents=True)
    for stage in ("characters", "captions"):
        (root / stage).mkdir()
    boxes, dlib = [], Priors("tiny").dlib_faces()
    for i, (f, person) in enumerate(zip(frames, people, strict=True)):
        image = np.full((320, 400, 3), 90, np.uint8)
        portrait = Image.fromarray(_portrait(person))
        portrait = portrait.resize((round(portrait.width * 300 / portrait.height), 300))
        image[10:310, 10 * i : 10 * i + portrait.width] = np.asarray(portrait)
        [face] = dlib.detect(image)
        boxes.append(face.bbox.tolist())
        Image.fromarray(image).save(layout.stage_dir("frames", "m") / f"{f:08d}.png")
        for stage, name in (("masks", "mask"), ("poses", "pose"), ("references", "crop")):
            Image.fromarray(image).save(layout.stage_dir(stage, "m") / f"{name}{f}.png")
    ids = [0, 0, 0, 1, 1]

    def table(**columns):
        return pd.DataFrame({"movie": "m", "character_id": ids, "frame_idx": frames, **columns})

    unit = np.eye(512, dtype=np.float32)[0].tolist()
    table(
        path=[f"frames/m/{f:08d}.png" for f in frames],
        bbox=boxes,
        embedding=[unit] * 5,
        embedding_raw_norm=21.5,
    ).to_parquet(layout.table("characters", "m"))
    mask_status = ["ok", "ok", "ok", "ok", "skipped"]
    table(
        mask_file=[f"mask{f}.png" for f in frames],
        status=mask_status,
        skip_reason=["", "", "", "", "empty mask: area 0.0000 < 0.01"],
    ).to_parquet(layout.table("masks", "m"))
    ok4 = [0, 0, 0, 1]
    pd.DataFrame(
        {
            "movie": "m",
            "character_id": ok4,
            "frame_idx": frames[:4],
            "mask_file": [f"mask{f}.png" for f in frames[:4]],
            "control_file": [f"pose{f}.png" for f in frames[:4]],
            "status": ["ok", "ok", "ok", "skipped"],
            "skip_reason": ["", "", "", "no pose found: 2 of 133 keypoints"],
        }
    ).to_parquet(layout.table("poses", "m"))
    caption = "A woman " + "stands " * 110
    pd.DataFrame(
        {
            "movie": "m",
            "character_id": [0, 0, 0],
            "frame_idx": frames[:3],
            "caption": [caption, caption, "A man waves."],
            "status": ["ok", "ok", "skipped"],
            "skip_reason": ["", "", "3 words, outside 100-150"],
        }
    ).to_parquet(layout.table("captions", "m"))
    pd.DataFrame(
        {
            "movie": "m",
            "character_id": ok4,
            "frame_idx": frames[:4],
            "crop_file": [f"crop{f}.png" for f in frames[:4]],
        }
    ).to_parquet(layout.table("references", "m"))
    return layout


def test_movie_triplets_record_every_skip_and_follow_the_seed(tmp_path: Path, perception):
    layout = small_movie_dataset(tmp_path)
    dlib = perception.priors.dlib_faces()
    triplets, skipped = movie_triplets(layout, "m", TripletsParams(seed=0), dlib)
    assert [t.character_id for t in triplets] == [0]
    t = triplets[0]
    assert t.reference_frame != t.target_frame and t.target_frame in (0, 50)
    assert set(t.images) == {
        "reference.png",
        "reference_crop.png",
        "target.png",
        "target_mask.png",
        "target_pose.png",
    }
    reasons = {(s["stage"], s["frame_idx"]): s["reason"] for s in skipped}
    assert reasons[("masks", 200)].startswith("empty mask")
    assert reasons[("poses", 150)].startswith("no pose found")
    assert reasons[("captions", 100)] == "3 words, outside 100-150"
    assert reasons[("triplets", None)].startswith("no (reference, target) pair")
    assert t.identity_similarity >= TripletsParams().min_identity_similarity  # one person
    choices = {
        (t.reference_frame, t.target_frame)
        for seed in range(8)
        for t in movie_triplets(layout, "m", TripletsParams(seed=seed), dlib)[0]
    }
    again = movie_triplets(layout, "m", TripletsParams(seed=0), dlib)[0][0]
    assert (again.reference_frame, again.target_frame) == (t.reference_frame, t.target_frame)
    assert len(choices) > 1  # the seed, not the table order, decides


def test_an_empty_dataset_fails_its_check_instead_of_crashing(tmp_path: Path):
    manifest = write_manifest([], [], tmp_path, {"seed": 0})
    skipped = pd.read_parquet(tmp_path / "skipped.parquet")
    result = check_triplets(manifest, skipped, tmp_path, CaptionsParams(), TripletsParams())
    assert not result.passed and "expect_table_row_count_to_be_between" in result.description


def identity_checked(root: Path, people: tuple[str, ...], dlib, params=None):
    """movie_triplets over the small movie of `people`, written out and checked."""
    params = params or TripletsParams()
    layout = small_movie_dataset(root, people)
    triplets, skipped = movie_triplets(layout, "m", params, dlib)
    out = root / "triplets"
    rows = [write_triplet(t, out) for t in triplets]
    manifest = write_manifest(rows, skipped, out, {"seed": 0})
    skipped_table = pd.read_parquet(out / "skipped.parquet")
    caption_rules = CaptionsParams(min_words=1, max_words=200)
    return (
        manifest,
        skipped_table,
        check_triplets(manifest, skipped_table, out, caption_rules, params),
    )


def test_a_pair_of_two_people_is_dropped_and_fails_the_identity_check(tmp_path: Path, perception):
    dlib = perception.priors.dlib_faces()
    manifest, skipped, result = identity_checked(tmp_path / "one", ONE_PERSON, dlib)
    assert result.passed, result.description
    assert manifest["identity_similarity"].iloc[0] >= TripletsParams().min_identity_similarity
    assert not (skipped["stage"] == "identity").any()

    manifest, skipped, result = identity_checked(tmp_path / "three", MIS_GROUPED, dlib)
    assert manifest.empty or "m-c0000" not in set(manifest["triplet_id"])  # never a training pair
    [dropped] = skipped[skipped["stage"] == "identity"].itertuples()
    assert dropped.character_id == 0
    assert dropped.identity_similarity < TripletsParams().min_identity_similarity
    assert (
        "show two people" in dropped.reason and "triplets.min_identity_similarity" in dropped.reason
    )
    assert not result.passed
    assert "identity_similarity" in result.description and "mostly" in result.description
    # Tolerated when the params allow every pair to mismatch.
    lenient = TripletsParams(max_mismatched_fraction=1.0)
    *_, result = identity_checked(tmp_path / "lenient", MIS_GROUPED, dlib, lenient)
    assert "identity_similarity" not in result.description


def test_skip_counts_are_metadata_only_when_something_was_skipped():
    table = pd.DataFrame(
        {"status": ["ok", "skipped", "skipped"], "skip_reason": ["", "too small", "too small"]}
    )
    assert skipped_metadata(table)["skipped"].value == {"too small": 2}
    assert skipped_metadata(table[table["status"] == "ok"]) == {}
