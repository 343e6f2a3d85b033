"""SAM masks and Grounding-DINO person boxes through the `full` loaders, on tiny random models.

The tiny models are saved with `save_pretrained` in transformers' layout and loaded back
through `load_segmenter` / `load_person_detector`, the code path of real weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.segmentation import (
    GroundingDinoPersonDetector,
    SamSegmenter,
    SegmentationResult,
    best_person_box,
    largest_mask,
    load_person_detector,
    load_segmenter,
)

torch.set_num_threads(1)

HEIGHT, WIDTH = 90, 120
FACE_BOX = (50.0, 15.0, 70.0, 40.0)
POINT = ((FACE_BOX[0] + FACE_BOX[2]) / 2, (FACE_BOX[1] + FACE_BOX[3]) / 2)
PERSON_BOX = (35.0, 10.0, 85.0, 88.0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """Dark noise with a bright figure (head and body) in the middle."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    x1, y1, x2, y2 = (int(v) for v in PERSON_BOX)
    image[y1 + 30 : y2, x1:x2] = (200, 60, 60)
    fx1, fy1, fx2, fy2 = (int(v) for v in FACE_BOX)
    image[fy1:fy2, fx1:fx2] = (230, 190, 160)
    return image


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("segmentation") / "models"
    sam = SamSegmenter.tiny(seed=3)
    sam.model.save_pretrained(models / "sam")
    sam.processor.save_pretrained(models / "sam")
    dino = GroundingDinoPersonDetector.tiny(seed=3)
    dino.model.save_pretrained(models / "grounding-dino")
    dino.processor.save_pretrained(models / "grounding-dino")
    return models


@pytest.fixture(scope="module")
def segmenter(models_dir: Path) -> SamSegmenter:
    return load_segmenter("full", models_dir)


def raw_masks(
    segmenter: SamSegmenter, image: np.ndarray, box: tuple[float, ...] | None
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """All multimask outputs at image size, their IoU scores, and the low-res logits."""
    inputs = segmenter.processor(
        images=image,
        input_points=[[list(POINT)]],
        input_labels=[[1]],
        input_boxes=None if box is None else [[list(box)]],
        return_tensors="pt",
    )
    prompt = {
        k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")
    }
    with torch.inference_mode():
        outputs = segmenter.model(**prompt, multimask_output=True)
    masks = segmenter.processor.post_process_masks(
        outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0]
    return masks.numpy(), outputs.iou_scores[0, 0].numpy(), outputs.pred_masks


@pytest.mark.parametrize("box", [None, PERSON_BOX], ids=["point", "point+box"])
def test_full_segmenter_keeps_the_largest_mask(
    segmenter: SamSegmenter, image: np.ndarray, box: tuple[float, ...] | None
) -> None:
    result = segmenter.segment(image, POINT, box)

    assert isinstance(result, SegmentationResult)
    assert result.mask.shape == (HEIGHT, WIDTH)
    assert result.mask.dtype == np.bool_
    assert result.area_fraction == pytest.approx(result.mask.sum() / (HEIGHT * WIDTH))
    assert np.isfinite(result.score)

    masks, scores, _ = raw_masks(segmenter, image, box)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    assert len(masks) == 3
    kept = int(np.argmax(areas))
    assert np.array_equal(result.mask, masks[kept])
    assert result.score == pytest.approx(float(scores[kept]))


def test_box_is_part_of_the_prompt(segmenter: SamSegmenter, image: np.ndarray) -> None:
    *_, point_only = raw_masks(segmenter, image, None)
    *_, with_box = raw_masks(segmenter, image, PERSON_BOX)
    assert not torch.allclose(point_only, with_box)


def test_full_loader_reproduces_the_saved_model(segmenter: SamSegmenter, image: np.ndarray) -> None:
    saved = SamSegmenter.tiny(seed=3).segment(image, POINT, PERSON_BOX)
    loaded = segmenter.segment(image, POINT, PERSON_BOX)
    assert np.array_equal(saved.mask, loaded.mask)
    assert saved.score == pytest.approx(loaded.score)


def test_segment_batch_matches_frame_by_frame(segmenter: SamSegmenter, image: np.ndarray) -> None:
    """One image-encoder call over frames of two sizes, prompts with and without a box, gives
    each frame's `segment` result. Tolerance: scores within 1e-5, at most 0.1% of a mask's
    pixels differ (a batched encoder may sum in another order; on these models none do)."""
    rng = np.random.default_rng(1)
    other = rng.integers(0, 255, (60, 100, 3), dtype=np.uint8)  # another size: other padding
    images = [image, other, image[::-1].copy()]
    points = [POINT, (30.0, 20.0), (POINT[0], HEIGHT - POINT[1])]
    boxes = [PERSON_BOX, None, None]
    calls = []
    encoder = segmenter.model.vision_encoder
    hook = encoder.register_forward_hook(lambda _m, args, _o: calls.append(len(args[0])))
    try:
        batched = segmenter.segment_batch(images, points, boxes)
    finally:
        hook.remove()
    assert calls == [3]  # one encoder call for the three frames
    for result, args in zip(batched, zip(images, points, boxes, strict=True), strict=True):
        single = segmenter.segment(*args)
        assert result.mask.shape == single.mask.shape
        assert (result.mask != single.mask).mean() <= 1e-3
        assert result.score == pytest.approx(single.score, abs=1e-5)
    assert segmenter.segment_batch([], []) == []
    with pytest.raises(ValueError, match="2 images, 1 points"):
        segmenter.segment_batch([image, image], [POINT])


def test_bfloat16_masks_match_float32(models_dir: Path, image: np.ndarray) -> None:
    """`masks.dtype: bfloat16` through the `full` loader: the same masks as float32 but for
    edge pixels. Tolerance: at most 3% of a mask's pixels differ, scores within 1e-3."""
    fp32 = load_segmenter("full", models_dir)
    bf16 = load_segmenter("full", models_dir, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    images = [image, image[::-1].copy()]
    points = [POINT, (POINT[0], HEIGHT - POINT[1])]
    boxes = [PERSON_BOX, None]
    for low, full in zip(
        bf16.segment_batch(images, points, boxes),
        fp32.segment_batch(images, points, boxes),
        strict=True,
    ):
        assert low.mask.dtype == np.bool_ and low.mask.shape == full.mask.shape
        assert (low.mask != full.mask).mean() <= 0.03
        assert low.score == pytest.approx(full.score, abs=1e-3)


def test_largest_mask_picks_most_pixels_first_on_ties() -> None:
    masks = np.zeros((3, 4, 5), dtype=bool)
    masks[0, :2, :2] = True  # 4 px
    masks[1, :3, :3] = True  # 9 px
    masks[2, 1:4, 1:4] = True  # 9 px, a tie with mask 1
    scores = np.array([0.9, 0.2, 0.7], dtype=np.float32)

    mask, score = largest_mask(masks, scores)
    assert np.array_equal(mask, masks[1])
    assert score == pytest.approx(0.2)

    mask, score = largest_mask(masks[[0, 2]], scores[[0, 2]])
    assert np.array_equal(mask, masks[2])
    assert score == pytest.approx(0.7)


def test_tiny_segmenter_is_deterministic_per_seed(image: np.ndarray) -> None:
    first = SamSegmenter.tiny(seed=5)
    again = SamSegmenter.tiny(seed=5)
    other = SamSegmenter.tiny(seed=6)

    a = first.segment(image, POINT, PERSON_BOX)
    b = again.segment(image, POINT, PERSON_BOX)
    assert np.array_equal(a.mask, b.mask)
    assert a.score == b.score
    assert first.device == "cpu"

    def weights(segmenter: SamSegmenter) -> torch.Tensor:
        return torch.cat([p.flatten() for p in segmenter.model.parameters()])

    assert torch.equal(weights(first), weights(again))
    assert not torch.equal(weights(first), weights(other))


def test_tiny_profile_segmenter(image: np.ndarray) -> None:
    result = load_segmenter("tiny").segment(image, POINT)
    assert result.mask.shape == (HEIGHT, WIDTH)


def test_full_person_detector_returns_pixel_boxes(models_dir: Path, image: np.ndarray) -> None:
    detector = load_person_detector("full", models_dir)
    boxes = detector.detect(image)

    assert boxes.dtype == np.float32
    assert boxes.ndim == 2
    assert boxes.shape[1] == 4
    assert len(boxes) > 0  # random heads score most of the tiny model's 10 queries above 0.35
    assert np.all(boxes >= 0)
    assert np.all(boxes[:, [0, 2]] <= WIDTH)
    assert np.all(boxes[:, [1, 3]] <= HEIGHT)
    assert np.array_equal(boxes, GroundingDinoPersonDetector.tiny(seed=3).detect(image))


def test_person_detector_threshold_can_leave_no_box(models_dir: Path, image: np.ndarray) -> None:
    detector = GroundingDinoPersonDetector(models_dir / "grounding-dino", box_threshold=1.0)
    boxes = detector.detect(image)
    assert boxes.shape == (0, 4)
    assert boxes.dtype == np.float32


def test_tiny_person_detector_is_deterministic(image: np.ndarray) -> None:
    boxes = load_person_detector("tiny").detect(image)
    assert boxes.shape[1:] == (4,)
    assert np.array_equal(boxes, GroundingDinoPersonDetector.tiny(seed=0).detect(image))


def test_best_person_box_takes_the_largest_overlap() -> None:
    face = np.array([10, 10, 20, 20], dtype=np.float32)
    boxes = np.array(
        [
            [0, 0, 12, 12],  # overlap 4
            [15, 0, 40, 40],  # overlap 50
            [8, 8, 22, 22],  # overlap 100: contains the face
            [30, 30, 60, 60],  # none
        ],
        dtype=np.float32,
    )
    assert np.array_equal(best_person_box(boxes, face), boxes[2])
    assert np.array_equal(best_person_box(boxes[[0, 1, 3]], face), boxes[1])
    left, right = [0, 10, 15, 20], [15, 10, 40, 20]  # overlap 50 each: the first wins
    assert np.array_equal(best_person_box(np.array([left, right]), face), left)
    assert np.array_equal(best_person_box(np.array([right, left]), face), right)


def test_best_person_box_without_overlap_is_none() -> None:
    face = np.array([10, 10, 20, 20], dtype=np.float32)
    touching = np.array([[20, 10, 30, 20], [0, 0, 5, 5]], dtype=np.float32)
    assert best_person_box(touching, face) is None
    assert best_person_box(np.zeros((0, 4), dtype=np.float32), face) is None


@pytest.mark.parametrize(
    ("loader", "model"), [(load_segmenter, "sam"), (load_person_detector, "grounding-dino")]
)
def test_missing_model_folder_is_named(loader, model: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "models" / model))):
        loader("full", tmp_path / "models")
    (tmp_path / "models" / model).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="transformers layout"):
        loader("full", tmp_path / "models")


@pytest.mark.parametrize("loader", [load_segmenter, load_person_detector])
def test_unknown_profile(loader) -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        loader("medium")
