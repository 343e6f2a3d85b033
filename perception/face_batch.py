"""insightface over many frames at once: SCRFD detection in one ONNX call per batch of frames,
ArcFace in one call per batch of aligned faces.

insightface runs one image per detector call and one face per recogniser call. On a GPU that
leaves it idle between small calls, so the faces stage hands a batch of frames here. The
letterbox, the input normalisation, the anchor decoding and the NMS are insightface's own
steps in its own order, so a batch gives the boxes and embeddings one frame at a time gives
(tests/test_face_batch.py states the tolerance). A model file whose batch axis is fixed at 1
(or a detector without a batch axis in its outputs) cannot take a batch: it runs frame by
frame (face by face) through insightface's own calls instead.
"""

from __future__ import annotations

import cv2
import numpy as np

from perception.models import takes_batches


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The image scaled to fit `size` (width, height) and padded right and below with black,
    and its scale: SCRFD's detector input, as insightface makes it."""
    width, height = size
    if image.shape[0] / image.shape[1] > height / width:
        new_height, new_width = height, int(height / (image.shape[0] / image.shape[1]))
    else:
        new_width, new_height = width, int(width * image.shape[0] / image.shape[1])
    boxed = np.zeros((height, width, 3), dtype=np.uint8)
    boxed[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
    return boxed, new_height / image.shape[0]


def _anchor_centres(det, size: tuple[int, int], stride: int) -> np.ndarray:
    """Pixel centres of one pyramid level's anchors, in (row, column, anchor) order."""
    width, height = size
    key = (height // stride, width // stride, stride)
    if key not in det.center_cache:
        grid = np.stack(np.mgrid[: key[0], : key[1]][::-1], axis=-1).astype(np.float32)
        centres = (grid * stride).reshape(-1, 2)
        det.center_cache[key] = np.repeat(centres, det._num_anchors, axis=0)
    return det.center_cache[key]


def _decode(det, outputs: list[np.ndarray], index: int, size: tuple[int, int], scale: float):
    """Image `index`'s faces in a batched SCRFD output: (n, 5) boxes + scores and (n, 5, 2)
    keypoints in image pixels, after the score threshold and NMS."""
    from insightface.model_zoo.scrfd import distance2bbox, distance2kps

    scores, boxes, points = [], [], []
    for level, stride in enumerate(det._feat_stride_fpn):
        centres = _anchor_centres(det, size, stride)
        level_scores = outputs[level][index]
        keep = np.where(level_scores >= det.det_thresh)[0]
        scores.append(level_scores[keep])
        boxes.append(distance2bbox(centres, outputs[level + det.fmc][index] * stride)[keep])
        kps = distance2kps(centres, outputs[level + 2 * det.fmc][index] * stride)
        points.append(kps.reshape(len(kps), -1, 2)[keep])
    score = np.vstack(scores)
    if score.size == 0:
        return np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32)
    order = np.argsort(-score.ravel(), kind="stable")
    found = np.hstack((np.vstack(boxes) / scale, score)).astype(np.float32)[order]
    kps = (np.vstack(points) / scale)[order]
    keep = det.nms(found)
    return found[keep], kps[keep]


def detect_scrfd(det, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each BGR image's faces: ((n, 5) boxes + scores, (n, 5, 2) keypoints), from one ONNX call
    when the detector takes batches."""
    if len(det.input_sizes) != 1 or not det.use_kps:
        raise ValueError("batched SCRFD needs one detector input size and a keypoint head")
    if not images or not (det.batched and takes_batches(det.session)):
        return [det.detect(image) for image in images]
    size = tuple(det.input_sizes[0])
    boxed = [letterbox(image, size) for image in images]
    blob = np.concatenate([det._prepare_input_blob(image, size) for image, _ in boxed])
    outputs = det.session.run(det.output_names, {det.input_name: blob})
    return [_decode(det, outputs, i, size, scale) for i, (_, scale) in enumerate(boxed)]


def embed_arcface(rec, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(n, 512) raw ArcFace embeddings of the faces given as (BGR image, (5, 2) keypoints),
    aligned as insightface aligns them, in one ONNX call when the recogniser takes batches."""
    from insightface.utils import face_align

    crops = [
        face_align.norm_crop(image, landmark=kps, image_size=rec.input_size[0])
        for image, kps in faces
    ]
    if not crops:
        return np.empty((0, 512), np.float32)
    if takes_batches(rec.session):
        return rec.get_feat(crops)
    return np.concatenate([rec.get_feat(crop) for crop in crops])
