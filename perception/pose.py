"""Whole-body pose (133 COCO-WholeBody keypoints) and its OpenPose-style control image.

`full`: RTMW / RTMPose wholebody 384x288 as an ONNX file, run top-down by rtmlib on ONNX
Runtime. `tiny`: a random network with the same SimCC interface, built with `onnx.helper`,
run through the same rtmlib path on CPU. The article feeds the pose model the masked image
(only the target character visible) and conditions Pose-IdentityNet on `draw_openpose`'s image.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from perception.params import DEFAULT_POSE_MODEL as DEFAULT_MODEL

if TYPE_CHECKING:
    import onnx

NUM_KEYPOINTS = 133  # COCO-WholeBody: 17 body, 6 feet, 68 face, 21 + 21 hands
# rtmlib's SimCC decoder divides bin indices by this ratio (RTMPose/RTMW codec setting).
SIMCC_SPLIT_RATIO = 2

# Index ranges of the parts in the 133-keypoint layout.
_FACE = slice(23, 91)
_LEFT_HAND = slice(91, 112)
_RIGHT_HAND = slice(112, 133)

# COCO-17 index of each OpenPose-18 keypoint; None is the neck, the shoulders' midpoint.
_OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# OpenPose-18 limbs; limb i is drawn in colour i, keypoint j in colour j. The two
# ear-shoulder links of the 19-limb list are left out, as the ControlNet annotators do.
_BODY_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
_BODY_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
# Feet as in OpenPose BODY_25 (ankle-big toe, big toe-small toe, ankle-heel), 133-layout
# indices; left foot blue, right foot cyan, BODY_25's colours.
_FOOT_LIMBS = (
    ((15, 17), (17, 18), (15, 19)),
    ((16, 20), (20, 21), (16, 22)),
)
_FOOT_POINTS = ((17, 18, 19), (20, 21, 22))
_FOOT_COLORS = ((0, 0, 255), (0, 255, 255))
# 21-point hand: wrist to each finger's four joints; edge e has hue e / 20 (OpenPose hands).
_HAND_EDGES = tuple(
    (0 if joint == 0 else 4 * finger + joint, 4 * finger + joint + 1)
    for finger in range(5)
    for joint in range(4)
)
_HAND_COLORS = tuple(
    tuple(round(255 * c) for c in colorsys.hsv_to_rgb(e / len(_HAND_EDGES), 1.0, 1.0))
    for e in range(len(_HAND_EDGES))
)
_HAND_POINT_COLOR = (0, 0, 255)
_FACE_POINT_COLOR = (255, 255, 255)
# The ControlNet OpenPose annotator dims the body limbs to 60% before drawing the joints.
_LIMB_INTENSITY = 0.6
# Stroke sizes at the annotator's 512-px detect resolution (short side), scaled from there.
_REFERENCE_SIDE = 512
_STICK_HALF_WIDTH, _BODY_RADIUS, _HAND_WIDTH, _HAND_RADIUS, _FACE_RADIUS = 4, 4, 2, 4, 3


@dataclass(frozen=True)
class Pose:
    """One person's 133 keypoints in pixels of the full image, with their confidences."""

    keypoints: np.ndarray  # (133, 2) float32
    scores: np.ndarray  # (133,) float32


class RTMPoseEstimator:
    """Top-down RTMPose / RTMW wholebody on one person box, through rtmlib + ONNX Runtime."""

    def __init__(
        self,
        onnx_path: str | Path,
        input_size: tuple[int, int] = (288, 384),
        device: str | None = None,
    ) -> None:
        from rtmlib import RTMPose

        from perception.models import onnx_providers

        onnx_path = Path(onnx_path)
        # rtmlib treats a path that does not exist as a URL to download: never let it.
        if not onnx_path.is_file():
            raise FileNotFoundError(f"no RTMPose ONNX model at {onnx_path}")
        if device is None:
            device = "cuda" if "CUDAExecutionProvider" in onnx_providers() else "cpu"
        self.onnx_path = onnx_path
        self.input_size = input_size  # (width, height), rtmlib's order
        self._model = RTMPose(
            onnx_model=str(onnx_path),
            model_input_size=input_size,
            backend="onnxruntime",
            device=device,
        )

    @classmethod
    def tiny(cls, cache_dir: str | Path | None = None, seed: int = 0) -> RTMPoseEstimator:
        """The offline stand-in: a random SimCC network written once to `cache_dir`, on CPU."""
        from perception.models import tiny_model_file

        data = tiny_rtmpose_model(seed).SerializeToString()
        path = tiny_model_file(data, f"tiny-rtmpose-{seed}", cache_dir)
        return cls(path, device="cpu")

    def estimate(self, image: np.ndarray, box: tuple[float, float, float, float]) -> Pose:
        """The pose of the person in `box` (x1, y1, x2, y2) of an RGB uint8 (H, W, 3) image.

        The image goes to rtmlib unchanged, in RGB: rtmlib normalises with RGB means and does
        not swap channels, and RTMPose/RTMW were trained on RGB (mmpose `bgr_to_rgb=True`).
        """
        _require_rgb(image)
        keypoints, scores = self._model(image, bboxes=[list(map(float, box))])
        return Pose(
            keypoints=np.asarray(keypoints[0], dtype=np.float32),
            scores=np.asarray(scores[0], dtype=np.float32),
        )

    def estimate_batch(
        self, images: list[np.ndarray], boxes: list[tuple[float, float, float, float]]
    ) -> list[Pose]:
        """`estimate` for each (image, box), the crops in one model call: rtmlib's own crop
        and decoding around one batched ONNX Runtime run. A model file whose batch axis is
        fixed at 1 runs crop by crop."""
        from perception.models import takes_batches

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images, {len(boxes)} boxes")
        session = self._model.session
        if len(images) < 2 or not takes_batches(session):
            return [self.estimate(image, box) for image, box in zip(images, boxes, strict=True)]
        crops = []
        for image, box in zip(images, boxes, strict=True):
            _require_rgb(image)
            crops.append(self._model.preprocess(image, list(map(float, box))))
        batch = np.stack([crop for crop, _, _ in crops]).transpose(0, 3, 1, 2)
        outputs = session.run(
            [output.name for output in session.get_outputs()],
            {session.get_inputs()[0].name: np.ascontiguousarray(batch, dtype=np.float32)},
        )
        poses = []
        for i, (_, center, scale) in enumerate(crops):
            keypoints, scores = self._model.postprocess(
                [output[i : i + 1] for output in outputs], center, scale
            )
            poses.append(
                Pose(
                    keypoints=np.asarray(keypoints[0], dtype=np.float32),
                    scores=np.asarray(scores[0], dtype=np.float32),
                )
            )
        return poses


def _require_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def tiny_rtmpose_model(
    seed: int = 0, input_size: tuple[int, int] = (288, 384), batch: int | str = "batch"
) -> onnx.ModelProto:
    """A random network with RTMPose's ONNX interface, deterministic in `seed`.

    Input `input` (N, 3, h, w); outputs `simcc_x` (N, 133, 2w) and `simcc_y` (N, 133, 2h);
    `batch`: N, free (a name) or fixed (1).
    32-px average pooling, a 16-d tanh code, then low-rank per-keypoint logits over the SimCC
    bins, so the keypoints move with the image; a sigmoid keeps the scores in (0, 1).
    """
    from onnx import TensorProto, helper, numpy_helper

    w, h = input_size
    rng = np.random.default_rng(seed)
    code = 16
    features = 3 * (h // 32) * (w // 32)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    pooled = op("AveragePool", ["input"], "pooled", kernel_shape=[32, 32], strides=[32, 32])
    flat = op("Flatten", [pooled], "flat")
    weights = (rng.standard_normal((features, code)) * features**-0.5).astype(np.float32)
    code_vector = op("Tanh", [op("MatMul", [flat, const("w_code", weights)], "pre")], "code")
    z = op("Unsqueeze", [code_vector, const("code_axis", np.array([1], np.int64))], "code_row")
    outputs = []
    for axis, bins in (("x", w * SIMCC_SPLIT_RATIO), ("y", h * SIMCC_SPLIT_RATIO)):
        per_keypoint = rng.standard_normal((NUM_KEYPOINTS, code)).astype(np.float32)
        per_bin = (rng.standard_normal((code, bins)) * 0.25).astype(np.float32)
        # Small bin weights and per-keypoint offsets spread the peak scores over (0, 1):
        # about 70% of keypoints score above the usual 0.3 drawing threshold.
        offsets = rng.normal(-1.5, 1.5, (NUM_KEYPOINTS, 1)).astype(np.float32)
        # (N, 1, code) * (133, code): each keypoint's own mix of the code, then its bin logits.
        mix = op("Mul", [z, const(f"k_{axis}", per_keypoint)], f"mix_{axis}")
        logits = op("MatMul", [mix, const(f"b_{axis}", per_bin)], f"lin_{axis}")
        logits = op("Add", [logits, const(f"o_{axis}", offsets)], f"logit_{axis}")
        probs = op("Sigmoid", [logits], f"prob_{axis}")
        name = op("Identity", [probs], f"simcc_{axis}")
        outputs.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, NUM_KEYPOINTS, bins])
        )
    graph = helper.make_graph(
        nodes,
        "tiny_rtmpose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, h, w])],
        outputs,
        initializers,
    )
    # IR 8 / opset 17: old enough for any onnxruntime build rtmlib runs on.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mask_box(mask: np.ndarray, pad: float = 0.05) -> tuple[float, float, float, float] | None:
    """The box (x1, y1, x2, y2) around a boolean mask's pixels, grown by `pad` of its width and
    height on each side and clipped to the image; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    height, width = mask.shape[:2]
    # Pixel edges, not centres: a one-pixel mask has a 1 x 1 box.
    x1, x2 = float(xs.min()), float(xs.max()) + 1.0
    y1, y2 = float(ys.min()), float(ys.max()) + 1.0
    dx, dy = pad * (x2 - x1), pad * (y2 - y1)
    return (max(x1 - dx, 0.0), max(y1 - dy, 0.0), min(x2 + dx, width), min(y2 + dy, height))


def masked_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with everything but the masked character blacked out."""
    return np.where(mask[..., None], image, 0).astype(np.uint8)


def extract_poses(
    estimator: RTMPoseEstimator,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    score_threshold: float = 0.3,
    min_keypoints: int = 5,
) -> list[tuple[Pose | None, str]]:
    """Each masked character's pose (article 3.2.3: the pose model sees only that character,
    boxed by its mask), or None and why not; the crops go to the model in one batch."""
    boxes = [mask_box(mask) for mask in masks]
    found = [i for i, box in enumerate(boxes) if box is not None]
    poses = estimator.estimate_batch(
        [masked_image(images[i], masks[i]) for i in found], [boxes[i] for i in found]
    )
    results: list[tuple[Pose | None, str]] = [(None, "empty mask")] * len(masks)
    for i, pose in zip(found, poses, strict=True):
        visible = int((pose.scores >= score_threshold).sum())
        if visible >= min_keypoints:
            results[i] = (pose, "")
        else:
            results[i] = (
                None,
                f"no pose found: {visible} of {NUM_KEYPOINTS} keypoints score "
                f">= {score_threshold} (need {min_keypoints})",
            )
    return results


def extract_pose(
    estimator: RTMPoseEstimator,
    image: np.ndarray,
    mask: np.ndarray,
    score_threshold: float = 0.3,
    min_keypoints: int = 5,
) -> tuple[Pose | None, str]:
    """The masked character's pose, or None and why not (`extract_poses` of one image)."""
    return extract_poses(estimator, [image], [mask], score_threshold, min_keypoints)[0]


class MaskedPoseExtractor:
    """Masked image → OpenPose control image, the way the dataset's poses stage makes them:
    the `pose_extractor` of `training.pipeline.CharacterInpaintPipeline`."""

    def __init__(
        self, estimator: RTMPoseEstimator, score_threshold: float = 0.3, min_keypoints: int = 5
    ) -> None:
        self.estimator = estimator
        self.score_threshold = score_threshold
        self.min_keypoints = min_keypoints

    def __call__(self, masked: np.ndarray) -> np.ndarray:
        pose, reason = extract_pose(
            self.estimator, masked, masked.any(axis=-1), self.score_threshold, self.min_keypoints
        )
        if pose is None:
            raise ValueError(f"cannot condition on the masked figure's pose: {reason}")
        return draw_openpose(pose, (masked.shape[1], masked.shape[0]), self.score_threshold)


def _openpose18(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 body -> OpenPose-18 order; the neck scores as the weaker shoulder."""
    points = np.zeros((18, 2), np.float32)
    scores = np.zeros(18, np.float32)
    for op, coco in enumerate(_OPENPOSE_FROM_COCO):
        if coco is None:
            points[op] = pose.keypoints[[5, 6]].mean(axis=0)
            scores[op] = pose.scores[[5, 6]].min()
        else:
            points[op], scores[op] = pose.keypoints[coco], pose.scores[coco]
    return points, scores


def _scaled(base: int, unit: float) -> int:
    return max(1, round(base * unit))


def _point(xy: np.ndarray) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))


def _stick(
    canvas: np.ndarray, a: np.ndarray, b: np.ndarray, half_width: int, color: tuple[int, ...]
) -> None:
    """A filled ellipse from a to b: the OpenPose body limb."""
    (ax, ay), (bx, by) = a, b
    length = math.hypot(bx - ax, by - ay)
    angle = math.degrees(math.atan2(by - ay, bx - ax))
    polygon = cv2.ellipse2Poly(
        _point((a + b) / 2), (round(length / 2), half_width), round(angle), 0, 360, 1
    )
    cv2.fillConvexPoly(canvas, polygon, color)


def draw_openpose(pose: Pose, size: tuple[int, int], score_threshold: float = 0.3) -> np.ndarray:
    """The OpenPose-style control image (RGB uint8, black background) for `size` = (W, H).

    Body limbs and joints in the 18-keypoint OpenPose colours, feet as in BODY_25, both hands
    with the OpenPose hand colours and the face's 68 points as white dots. Points scoring
    below `score_threshold` (or not finite) are left out with every limb that touches them.
    """
    width, height = size
    canvas = np.zeros((height, width, 3), np.uint8)
    unit = min(width, height) / _REFERENCE_SIDE
    visible = np.isfinite(pose.keypoints).all(axis=1) & (pose.scores >= score_threshold)
    body, body_scores = _openpose18(pose)
    body_visible = np.isfinite(body).all(axis=1) & (body_scores >= score_threshold)

    stick = _scaled(_STICK_HALF_WIDTH, unit)
    for (i, j), color in zip(_BODY_LIMBS, _BODY_COLORS, strict=False):
        if body_visible[i] and body_visible[j]:
            _stick(canvas, body[i], body[j], stick, color)
    for limbs, color in zip(_FOOT_LIMBS, _FOOT_COLORS, strict=True):
        for i, j in limbs:
            if visible[i] and visible[j]:
                _stick(canvas, pose.keypoints[i], pose.keypoints[j], stick, color)
    canvas = (canvas * _LIMB_INTENSITY).astype(np.uint8)

    radius = _scaled(_BODY_RADIUS, unit)
    for j, color in enumerate(_BODY_COLORS):
        if body_visible[j]:
            cv2.circle(canvas, _point(body[j]), radius, color, thickness=-1)
    for points, color in zip(_FOOT_POINTS, _FOOT_COLORS, strict=True):
        for j in points:
            if visible[j]:
                cv2.circle(canvas, _point(pose.keypoints[j]), radius, color, thickness=-1)

    hand_width, hand_radius = _scaled(_HAND_WIDTH, unit), _scaled(_HAND_RADIUS, unit)
    for hand in (_LEFT_HAND, _RIGHT_HAND):
        points, shown = pose.keypoints[hand], visible[hand]
        for (i, j), color in zip(_HAND_EDGES, _HAND_COLORS, strict=True):
            if shown[i] and shown[j]:
                cv2.line(canvas, _point(points[i]), _point(points[j]), color, hand_width)
        for point in points[shown]:
            cv2.circle(canvas, _point(point), hand_radius, _HAND_POINT_COLOR, thickness=-1)

    face_radius = _scaled(_FACE_RADIUS, unit)
    for point in pose.keypoints[_FACE][visible[_FACE]]:
        cv2.circle(canvas, _point(point), face_radius, _FACE_POINT_COLOR, thickness=-1)
    return canvas


def load_pose_estimator(
    profile: str,
    models_dir: str | Path | None = None,
    model: str = DEFAULT_MODEL,
) -> RTMPoseEstimator:
    """The pose estimator of a profile: RTMPose from `<models_dir>/<model>` or the tiny one."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    def full() -> RTMPoseEstimator:
        path = resolve_models_dir(models_dir) / model
        if not path.is_file():
            raise FileNotFoundError(
                f"no pose model at {path}: put a COCO-WholeBody (133 keypoints) 384x288 "
                "RTMPose ONNX there, e.g. RTMW-x-l as rtmlib stores it (the end2end.onnx of "
                f"openmmlab's rtmw onnx_sdk zip, renamed {DEFAULT_MODEL}) or the article's "
                "RTMPose-l wholebody 384x288, and pass its file name as `model`"
            )
        return RTMPoseEstimator(path)

    return by_profile(profile, full=full, tiny=RTMPoseEstimator.tiny)
