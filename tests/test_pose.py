"""Pose: the `full` loader through rtmlib on tiny ONNX models, the tiny profile, the mask box
and the OpenPose control image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from perception.pose import (
    DEFAULT_MODEL,
    NUM_KEYPOINTS,
    Pose,
    RTMPoseEstimator,
    draw_openpose,
    extract_pose,
    extract_poses,
    load_pose_estimator,
    mask_box,
    tiny_rtmpose_model,
)

INPUT_W, INPUT_H = 288, 384
# Control-image frame of the hand-made pose.
WIDTH, HEIGHT = 512, 768
CX = WIDTH / 2
# Colours of the OpenPose annotator: limbs at 60% (255 -> 153, 170 -> 102), joints at 100%.
RIGHT_UPPER_ARM = (153, 102, 0)  # limb 2, right shoulder -> right elbow, (255, 170, 0) dimmed
NECK_JOINT = (255, 85, 0)
HAND_POINT = (0, 0, 255)
THUMB_BASE_EDGE = (255, 0, 0)  # hand edge 0 (wrist -> thumb 1), hue 0
WHITE = (255, 255, 255)


def standing_pose() -> np.ndarray:
    """A person facing the camera in a 512x768 frame, (133, 2) pixels; COCO "left" is the
    person's left, on the image's right."""
    k = np.zeros((NUM_KEYPOINTS, 2), np.float32)
    body = [
        (0, 110), (12, 98), (-12, 98), (26, 104), (-26, 104),  # nose, eyes, ears
        (60, 190), (-60, 190), (75, 290), (-75, 290), (80, 380), (-80, 380),  # arms
        (35, 390), (-35, 390), (38, 530), (-38, 530), (40, 660), (-40, 660),  # legs
        (60, 690), (75, 685), (38, 675), (-60, 690), (-75, 685), (-38, 675),  # feet
    ]  # fmt: skip
    k[:23] = [(CX + x, y) for x, y in body]

    def arc(center, radii, start, stop, n):
        t = np.deg2rad(np.linspace(start, stop, n))
        return np.stack([center[0] + radii[0] * np.cos(t), center[1] + radii[1] * np.sin(t)], 1)

    face = [
        arc((CX, 100), (30, 36), 180, 0, 17),  # jaw, image left to right through the chin
        arc((CX - 13, 96), (9, 4), 200, 340, 5),  # right brow
        arc((CX + 13, 96), (9, 4), 200, 340, 5),  # left brow
        np.stack([np.full(4, CX), np.linspace(100, 113, 4)], 1),  # nose bridge
        np.stack([np.linspace(CX - 6, CX + 6, 5), np.full(5, 116)], 1),  # nostrils
        arc((CX - 12, 101), (5, 2.5), 180, 540, 7)[:6],  # right eye
        arc((CX + 12, 101), (5, 2.5), 180, 540, 7)[:6],  # left eye
        arc((CX, 124), (10, 4), 180, 540, 13)[:12],  # outer lips
        arc((CX, 124), (6, 2), 180, 540, 9)[:8],  # inner lips
    ]
    k[23:91] = np.concatenate(face)
    # Hands hang down from the wrists, fingers fanned; left hand first, as in COCO-WholeBody.
    for start, wrist, angles in (
        (91, 9, (150, 112, 94, 77, 60)),
        (112, 10, (30, 68, 86, 103, 120)),
    ):
        k[start] = k[wrist] + (0, 6)
        for f, angle in enumerate(angles):
            direction = np.array([np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))])
            for j in range(4):
                k[start + 1 + 4 * f + j] = k[start] + direction * (18 + 11 * j)
    return k


def pixel(image: np.ndarray, xy: np.ndarray) -> tuple[int, ...]:
    x, y = np.round(xy).astype(int)
    return tuple(int(c) for c in image[y, x])


def synthetic_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (360, 480, 3), dtype=np.uint8)
    image[60:320, 180:300] = rng.integers(100, 256, (260, 120, 3), dtype=np.uint8)
    return image


def rtmlib_crop(box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the region rtmlib feeds the model: box x1.25, widened to the input aspect."""
    x1, y1, x2, y2 = box
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    aspect = INPUT_W / INPUT_H
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    half = np.array([w, h]) / 2
    return center - half, center + half


def test_full_loader_runs_rtmpose_on_a_box(tmp_path: Path) -> None:
    onnx.save(tiny_rtmpose_model(seed=1), tmp_path / "wholebody.onnx")
    estimator = load_pose_estimator("full", tmp_path, model="wholebody.onnx")
    assert estimator.onnx_path == tmp_path / "wholebody.onnx"

    # The file has RTMPose's SimCC interface at 384x288, split ratio 2, and a free batch axis.
    session = onnxruntime.InferenceSession(str(estimator.onnx_path))
    assert session.get_inputs()[0].shape == ["batch", 3, INPUT_H, INPUT_W]
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {
        "simcc_x": ["batch", NUM_KEYPOINTS, 2 * INPUT_W],
        "simcc_y": ["batch", NUM_KEYPOINTS, 2 * INPUT_H],
    }

    box = (170.0, 50.0, 310.0, 330.0)
    pose = estimator.estimate(synthetic_image(), box)
    assert pose.keypoints.shape == (NUM_KEYPOINTS, 2) and pose.keypoints.dtype == np.float32
    assert pose.scores.shape == (NUM_KEYPOINTS,) and pose.scores.dtype == np.float32
    assert np.isfinite(pose.scores).all() and np.isfinite(pose.keypoints).all()
    low, high = rtmlib_crop(box)
    assert (pose.keypoints >= low - 1e-3).all() and (pose.keypoints <= high + 1e-3).all()
    # A different image moves the keypoints: the model reads the crop.
    moved = estimator.estimate(synthetic_image()[::-1].copy(), box)
    assert not np.allclose(moved.keypoints, pose.keypoints)


@pytest.mark.parametrize("batch", ["batch", 1], ids=["free batch axis", "fixed at batch 1"])
def test_estimate_batch_matches_crop_by_crop(tmp_path: Path, batch) -> None:
    """Crops of several images and boxes in one model call give each crop's `estimate`.
    Tolerance: keypoints within 1e-3 px, scores within 1e-5 (a batched run may sum in another
    order). A file fixed at batch 1 runs crop by crop."""
    onnx.save(tiny_rtmpose_model(seed=1, batch=batch), tmp_path / "wholebody.onnx")
    estimator = load_pose_estimator("full", tmp_path, model="wholebody.onnx")
    images = [synthetic_image(), synthetic_image()[::-1].copy(), synthetic_image()[:, ::-1].copy()]
    boxes = [(170.0, 50.0, 310.0, 330.0), (10.0, 20.0, 200.0, 300.0), (100.0, 0.0, 400.0, 360.0)]
    session = estimator._model.session
    run, calls = session.run, []
    session.run = lambda *args, **kwargs: (
        calls.append(len(args[1]["input"])) or run(*args, **kwargs)
    )
    batched = estimator.estimate_batch(images, boxes)
    assert calls == ([3] if batch == "batch" else [1, 1, 1])
    for pose, image, box in zip(batched, images, boxes, strict=True):
        single = estimator.estimate(image, box)
        np.testing.assert_allclose(pose.keypoints, single.keypoints, rtol=0, atol=1e-3)
        np.testing.assert_allclose(pose.scores, single.scores, rtol=0, atol=1e-5)
    assert estimator.estimate_batch([], []) == []
    with pytest.raises(ValueError, match="2 images, 1 boxes"):
        estimator.estimate_batch(images[:2], boxes[:1])


def test_extract_poses_keeps_order_and_skips_empty_masks() -> None:
    estimator = RTMPoseEstimator.tiny()
    image = synthetic_image()
    full = np.zeros(image.shape[:2], bool)
    full[50:330, 170:310] = True
    empty = np.zeros_like(full)
    results = extract_poses(estimator, [image, image, image], [full, empty, full], 0.3, 1)
    assert [reason for _, reason in results] == ["", "empty mask", ""]
    single, _ = extract_pose(estimator, image, full, 0.3, 1)
    np.testing.assert_allclose(results[2][0].keypoints, single.keypoints, rtol=0, atol=1e-3)


def red_probe_model() -> onnx.ModelProto:
    """SimCC outputs whose x peak is at bin 288 + 100 * (mean of input channel 0)."""
    bins_x, bins_y = 2 * INPUT_W, 2 * INPUT_H
    consts = {
        "starts": np.array([0], np.int64),
        "ends": np.array([1], np.int64),
        "axes": np.array([1], np.int64),
        "shape": np.array([1, 1, 1], np.int64),
        "bins": np.arange(bins_x, dtype=np.float32).reshape(1, 1, bins_x),
        "keypoints": np.zeros((1, NUM_KEYPOINTS, 1), np.float32),
        # A peak of 1 in the middle row: every keypoint scores 1.
        "y": np.eye(1, bins_y, bins_y // 2, dtype=np.float32)[None].repeat(NUM_KEYPOINTS, 1),
    }
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("Slice", ["means", "starts", "ends", "axes"], ["red"]),
        helper.make_node("Reshape", ["red", "shape"], ["red3"]),
        helper.make_node("Mul", ["red3", "hundred"], ["shift"]),
        helper.make_node("Add", ["shift", "centre"], ["target"]),
        helper.make_node("Sub", ["bins", "target"], ["offset"]),
        helper.make_node("Abs", ["offset"], ["distance"]),
        helper.make_node("Mul", ["distance", "tiny"], ["penalty"]),
        helper.make_node("Sub", ["one", "penalty"], ["row"]),
        helper.make_node("Add", ["row", "keypoints"], ["simcc_x"]),
        helper.make_node("Identity", ["y"], ["simcc_y"]),
    ]
    scalars = {"hundred": 100.0, "centre": float(INPUT_W), "tiny": 1e-3, "one": 1.0}
    initializers = [numpy_helper.from_array(v, k) for k, v in consts.items()] + [
        numpy_helper.from_array(np.array(v, np.float32), k) for k, v in scalars.items()
    ]
    graph = helper.make_graph(
        nodes,
        "red_probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT_H, INPUT_W])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, NUM_KEYPOINTS, bins_x]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, NUM_KEYPOINTS, bins_y]),
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_model_sees_the_image_in_rgb(tmp_path: Path) -> None:
    # RTMPose/RTMW normalise RGB (mmpose bgr_to_rgb=True): channel 0 must be red.
    onnx.save(red_probe_model(), tmp_path / "probe.onnx")
    estimator = RTMPoseEstimator(tmp_path / "probe.onnx", device="cpu")
    box = (150.0, 100.0, 250.0, 233.0)  # the padded crop stays inside the image
    centre_x = (box[0] + box[2]) / 2
    red = np.zeros((400, 400, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((400, 400, 3), np.uint8)
    blue[..., 2] = 255
    assert (estimator.estimate(red, box).keypoints[:, 0] > centre_x).all()
    assert (estimator.estimate(blue, box).keypoints[:, 0] < centre_x).all()


def test_tiny_is_deterministic_and_built_once(tmp_path: Path) -> None:
    first = RTMPoseEstimator.tiny(tmp_path / "a")
    again = RTMPoseEstimator.tiny(tmp_path / "a")
    other_dir = RTMPoseEstimator.tiny(tmp_path / "b")
    assert again.onnx_path == first.onnx_path
    assert list((tmp_path / "a").iterdir()) == [first.onnx_path]
    assert other_dir.onnx_path.read_bytes() == first.onnx_path.read_bytes()

    box = (170.0, 50.0, 310.0, 330.0)
    pose, same = (e.estimate(synthetic_image(), box) for e in (first, other_dir))
    np.testing.assert_array_equal(pose.keypoints, same.keypoints)
    np.testing.assert_array_equal(pose.scores, same.scores)
    other_seed = RTMPoseEstimator.tiny(tmp_path / "a", seed=1).estimate(synthetic_image(), box)
    assert not np.array_equal(other_seed.keypoints, pose.keypoints)
    # Scores spread over (0, 1), so a drawing threshold keeps some keypoints and drops others.
    assert 0.0 < pose.scores.min() < 0.3 < pose.scores.max() < 1.0
    assert isinstance(load_pose_estimator("tiny"), RTMPoseEstimator)


def test_mask_box_pads_and_clips() -> None:
    mask = np.zeros((100, 200), bool)
    mask[10:20, 30:50] = True
    assert mask_box(mask, pad=0.0) == (30.0, 10.0, 50.0, 20.0)
    assert mask_box(mask, pad=0.1) == pytest.approx((28.0, 9.0, 52.0, 21.0))
    mask[90:, 190:] = True  # now reaches the bottom-right corner
    assert mask_box(mask, pad=0.1) == pytest.approx((13.0, 1.0, 200.0, 100.0))
    assert mask_box(np.zeros((100, 200), bool)) is None


def test_draw_openpose_colours_limbs_hands_and_face() -> None:
    keypoints = standing_pose()
    image = draw_openpose(Pose(keypoints, np.ones(NUM_KEYPOINTS, np.float32)), (WIDTH, HEIGHT))
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8

    right_shoulder, right_elbow = keypoints[6], keypoints[8]
    assert pixel(image, (right_shoulder + right_elbow) / 2) == RIGHT_UPPER_ARM
    assert pixel(image, (keypoints[5] + keypoints[6]) / 2) == NECK_JOINT
    left_wrist, left_thumb = keypoints[91], keypoints[92]
    assert pixel(image, left_thumb) == HAND_POINT
    assert pixel(image, (left_wrist + left_thumb) / 2) == THUMB_BASE_EDGE
    assert pixel(image, keypoints[23 + 8]) == WHITE  # chin
    assert pixel(image, (50, 50)) == (0, 0, 0)


def test_draw_openpose_skips_low_scores_and_scales() -> None:
    keypoints = standing_pose()
    assert not draw_openpose(
        Pose(keypoints, np.full(NUM_KEYPOINTS, 0.29, np.float32)), (WIDTH, HEIGHT)
    ).any()

    scores = np.ones(NUM_KEYPOINTS, np.float32)
    scores[8] = 0.1  # right elbow: both right-arm limbs go
    scores[23:91] = 0.1  # the whole face
    image = draw_openpose(Pose(keypoints, scores), (WIDTH, HEIGHT), score_threshold=0.3)
    assert pixel(image, (keypoints[6] + keypoints[8]) / 2) == (0, 0, 0)
    assert pixel(image, (keypoints[8] + keypoints[10]) / 2) == (0, 0, 0)
    assert pixel(image, keypoints[23 + 4]) == (0, 0, 0)  # jaw, clear of the body limbs
    assert not (image == 255).all(axis=2).any()  # no white face dots left
    assert pixel(image, (keypoints[5] + keypoints[7]) / 2) != (0, 0, 0)  # left arm stays

    # Strokes grow with the image: twice the size, about four times the inked pixels.
    full = Pose(keypoints, np.ones(NUM_KEYPOINTS, np.float32))
    small = np.count_nonzero(draw_openpose(full, (WIDTH, HEIGHT)).any(axis=2))
    large = np.count_nonzero(
        draw_openpose(Pose(keypoints * 2, full.scores), (2 * WIDTH, 2 * HEIGHT)).any(axis=2)
    )
    assert 3.0 < large / small < 5.0


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / DEFAULT_MODEL))):
        load_pose_estimator("full", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        load_pose_estimator("full", tmp_path, model="absent.onnx")
    # The estimator itself refuses too, instead of letting rtmlib try to download it.
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        RTMPoseEstimator(tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="profile"):
        load_pose_estimator("huge", tmp_path)
